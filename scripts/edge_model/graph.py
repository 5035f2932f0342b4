"""A tiny ONNX graph builder and the pieces both edge graphs use (RMSNorm, RoPE, causal mask, KV rounding).

Every op is a plain ONNX (opset 17) or com.microsoft op that onnxruntime-web's wasm build runs; float
math follows HF's Llama in float32 so the converted model can be compared with transformers."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from .weights import HEAD_DIM

RMS_EPS = 1e-5
ROPE_THETA = 100000.0


class Graph:
    """node() returns its output name; init() registers a constant; inputs/outputs collect value infos."""

    def __init__(self, opset: int = 17):
        self.nodes, self.inits, self.inputs, self.outputs, self.n = [], [], [], [], 0
        self.opset = opset  # 21 for graphs with 4-bit tensors (uint4 Cast needs opset 21, IR 10)

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def const(self, arr, dtype=np.int64) -> str:
        self.n += 1
        return self.init(f"const_{self.n}", np.asarray(arr, dtype))

    def node(self, op: str, inputs: list[str], outputs: int | list[str] = 1, domain: str = "", **attrs):
        self.n += 1
        names = [f"{op}_{self.n}_{j}" for j in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op, inputs, names, name=f"{op}_{self.n}", domain=domain, **attrs))
        return names[0] if len(names) == 1 else names

    def input(self, name: str, elem: int, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, name: str, elem: int, shape: list) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem, shape))

    def model(self, name: str):
        graph = helper.make_graph(self.nodes, name, self.inputs, self.outputs, self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset), helper.make_opsetid("com.microsoft", 1)],
                              producer_name="reprise scripts/convert_edge_model.py")
        m.ir_version = 10 if self.opset >= 21 else 8
        return m

    # ------------------------------------------------------------------ shared pieces
    def rms(self, x: str, weight: np.ndarray, name: str) -> str:
        """HF LlamaRMSNorm in float32: x * 1/sqrt(mean(x^2) + eps) * w (w becomes an initializer `name`)."""
        sq = self.node("Mul", [x, x])
        var = (self.node("ReduceMean", [sq], axes=[-1], keepdims=1) if self.opset < 18  # axes became an input in opset 18
               else self.node("ReduceMean", [sq, self.const([-1])], keepdims=1))
        inv = self.node("Reciprocal", [self.node("Sqrt", [self.node("Add", [var, self.const(RMS_EPS, np.float32)])])])
        return self.node("Mul", [self.node("Mul", [x, inv]), self.init(name, weight)])

    def rope_tables(self, position_ids: str) -> tuple[str, str]:
        """cos, sin [1, S, 1, 64] from position ids, as HF computes them (inv_freq in float32, pos * inv_freq, cat)."""
        inv_freq = 1.0 / (ROPE_THETA ** (np.arange(0, HEAD_DIM, 2, dtype=np.int64).astype(np.float32) / HEAD_DIM))
        pos = self.node("Unsqueeze", [self.node("Cast", [position_ids], to=TensorProto.FLOAT), self.const([-1])])
        freqs = self.node("Mul", [pos, self.const(inv_freq.astype(np.float32), np.float32)])  # [1, S, 32]
        emb = self.node("Unsqueeze", [self.node("Concat", [freqs, freqs], axis=-1), self.const([2])])  # [1, S, 1, 64]
        return self.node("Cos", [emb]), self.node("Sin", [emb])

    def rope(self, x: str, cos: str, sin: str) -> str:
        """x * cos + rotate_half(x) * sin over the last axis (rotate_half = cat(-x2, x1)), token-major x."""
        x1, x2 = self.node("Split", [x, self.const([HEAD_DIM // 2, HEAD_DIM // 2])], 2, axis=-1)
        rot = self.node("Concat", [self.node("Neg", [x2]), x1], axis=-1)
        return self.node("Add", [self.node("Mul", [x, cos]), self.node("Mul", [rot, sin])])

    def causal_mask(self, position_ids: str, past_len: str, new_len: str, repeat: int) -> str:
        """[repeat * S, T] additive mask: query at absolute position p sees keys 0..p (T = past + S)."""
        key_pos = self.node("Range", [self.const(0), self.node("Add", [past_len, new_len]), self.const(1)])
        allowed = self.node("LessOrEqual", [key_pos, self.node("Reshape", [position_ids, self.const([-1, 1])])])
        mask = self.node("Where", [allowed, self.const(0.0, np.float32), self.const(-np.inf, np.float32)])
        return self.node("Tile", [mask, self.const([repeat, 1])])

    def kv_round(self, x: str) -> str:
        """The KV the model keeps: float32 rounded to bfloat16 (nearest even), carried as float16.

        bfloat16 precision is what makes the stored chunks small (~10.5 coded bits per value instead of
        ~13.5 for full float16), and every bfloat16 value of the KV's range is exact in float16, the
        16-bit type onnxruntime-web's JS tensors have. The graph attends over these rounded values for
        the current tokens too, so a turn resumed from stored KV sees exactly what a full-history turn sees."""
        b = self.node("Cast", [self.node("Cast", [x], to=TensorProto.BFLOAT16)], to=TensorProto.FLOAT)
        return self.node("Cast", [b], to=TensorProto.FLOAT16)

    def shape_dim(self, x: str, axis: int) -> str:
        return self.node("Gather", [self.node("Shape", [x]), self.const(axis)], axis=0)

    def one_after(self, x: str, elem: int) -> str:
        """A scalar 1 of type `elem` computed from x's shape: what is multiplied by it cannot run before
        x exists. ort orders a graph's nodes by their inputs, so a dequantization that reads only
        initializers may run long before its MatMul and keep its float32 weight alive meanwhile."""
        return self.node("Cast", [self.node("Greater", [self.shape_dim(x, 0), self.const(0)])], to=elem)
