"""The edge model conversion (scripts/convert_edge_model.py): GGUF weights, ONNX graphs, model files,
a Python onnxruntime runner and the verification against the fp32 reference."""
