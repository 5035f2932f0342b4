"""One decoder Linear of the edge model (gate/up: K=576 -> N=1536) in each op form onnxruntime could
run it, for bench/edge_op_forms.mjs to time in onnxruntime-web (wasm) and onnxruntime-node.

    gpu-backend/.venv/bin/python bench/edge_op_forms.py <out dir>

Each form computes x [1, S, K] @ W^T from the same random Q4_1 blocks (W = d*q + m per 32 along K).
Forms and the bits each weight keeps resident:
  nbits        MatMulNBits 4-bit + offset MatMul: q4_1_linear_nbits (scripts/edge_model/graph_layers.py)     5
  nbits-acc4   the same with accuracy_level=4 (int8 compute where the platform has the kernel)           5
  nbits-sym    MatMulNBits alone (no offset term: what symmetric 4-bit blocks would cost)               4.5
  nbits-b64, nbits-b128, nbits-b256
               MatMulNBits alone with larger blocks along K (requantized: not the GGUF's blocks)     4.25-4.5
  int8-dqmm    DynamicQuantizeMatMul: int8 weight per output channel, activations quantized per run    8
  u8-mmint     the Q4_1 blocks one value per byte (uint8 [K/32, 32, N]), activations quantized to int8
               per block of 32 (as llama.cpp's Q8_1 does), MatMulInteger per block, scaled and summed  8.5
  u4-mmint     the same from 4-bit packed bytes, unpacked per run with BitShift/Sub/Concat            5
  dql-u4       DequantizeLinear (opset 21) of uint4 [K, N] in blocks of 32 along K, zero point 8, then
               MatMul, + the same offset MatMul: the Q4_1 blocks exactly, dequantized by a plain op   5
  dequant      the edge's form (q4_1_linear_dequant): uint4 [K, N] DequantizeLinear'd (no zero point) after
               its input exists, MatMul, + blocksum(x) . m: the Q4_1 blocks exactly                    5
  f16          float16 weight, Cast to float32 per run, MatMul                                          16
  f32          float32 weight, MatMul (the speed bound)                                                 32
Not exact forms of the GGUF weights beyond nbits/nbits-acc4: this measures kernel speed only.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from edge_model.graph import Graph  # noqa: E402
from edge_model.graph_layers import q4_1_linear_dequant, q4_1_linear_nbits, uint4_init  # noqa: E402
from edge_model.weights import unpack_q4  # noqa: E402

K, N, BLOCK = 576, 1536, 32


def blocks(rng):
    packed = rng.integers(0, 256, (N, K // BLOCK, BLOCK // 2), dtype=np.uint8)
    d = (rng.random((N, K // BLOCK), np.float32) * 0.01).astype(np.float16)
    m = (-8 * d.astype(np.float32)).astype(np.float16)
    return packed, d, m


def dense(packed, d, m) -> np.ndarray:
    q = unpack_q4(packed).astype(np.float32)
    return (q * d.astype(np.float32)[..., None] + m.astype(np.float32)[..., None]).reshape(N, K)


def block_int8_linear(g: Graph, x: str, parts, packed_n: bool) -> str:
    """sum over blocks b of d[b,n] * sa[b] * (xq_b . (q_b,n - 8)) + blocksum(x) . (m + 8d): Q4_1 with
    activations quantized to int8 per block of 32 (scale sa = max|x_b| / 127)."""
    packed, d, m = parts
    nb = K // BLOCK
    qt = np.ascontiguousarray(unpack_q4(packed).transpose(1, 2, 0))  # [nb, 32, N]
    if packed_n:  # two N-neighbours per byte: the low nibble holds the even n
        p = g.init("w.p", (qt[..., 0::2] | (qt[..., 1::2] << 4)).astype(np.uint8))  # [nb, 32, N/2]
        four = g.const(np.array(4, np.uint8), np.uint8)
        hi = g.node("BitShift", [p, four], direction="RIGHT")
        lo = g.node("Sub", [p, g.node("BitShift", [hi, four], direction="LEFT")])
        pair = g.node("Concat", [g.node("Unsqueeze", [lo, g.const([-1])]), g.node("Unsqueeze", [hi, g.const([-1])])], axis=-1)
        b = g.node("Reshape", [pair, g.const([nb, BLOCK, N])])
    else:
        b = g.init("w.u8", qt)
    xb = g.node("Transpose", [g.node("Reshape", [x, g.const([-1, nb, BLOCK])])], perm=[1, 0, 2])  # [nb, S, 32]
    sa = g.node("Div", [g.node("ReduceMax", [g.node("Abs", [xb])], axes=[-1], keepdims=1), g.const(127.0, np.float32)])
    sa = g.node("Max", [sa, g.const(1e-30, np.float32)])
    xq = g.node("Cast", [g.node("Round", [g.node("Div", [xb, sa])])], to=TensorProto.INT8)
    acc = g.node("MatMulInteger", [xq, b, g.const(np.array(0, np.int8), np.int8), g.const(np.array(8, np.uint8), np.uint8)])  # int32 [nb, S, N]
    dt = g.init("w.d", np.ascontiguousarray(d.T)[:, None, :])  # float16 [nb, 1, N]
    scaled = g.node("Mul", [g.node("Mul", [g.node("Cast", [acc], to=TensorProto.FLOAT), g.node("Cast", [dt], to=TensorProto.FLOAT)]), sa])
    main = g.node("ReduceSum", [scaled, g.const([0])], keepdims=0)  # [S, N]
    off = (m.astype(np.float32) + 8 * d.astype(np.float32)).T.copy()  # [nb, N]
    sums = g.node("ReduceSum", [g.node("Reshape", [x, g.const([1, -1, nb, BLOCK])]), g.const([-1])], keepdims=0)
    return g.node("Add", [g.node("Reshape", [main, g.const([1, -1, N])]), g.node("MatMul", [sums, g.init("w.off", off)])])


def build(form: str, parts) -> onnx.ModelProto:
    g = Graph(opset=21 if form in ("dql-u4", "dequant") else 17)  # uint4 tensors are opset 21
    x = g.input("x", TensorProto.FLOAT, [1, "S", K])
    packed, d, m = parts
    if form in ("nbits", "nbits-acc4"):
        y = q4_1_linear_nbits(g, x, "w", parts, K)
        if form == "nbits-acc4":
            next(n for n in g.nodes if n.op_type == "MatMulNBits").attribute.append(onnx.helper.make_attribute("accuracy_level", 4))
    elif form == "nbits-sym":
        scales = g.node("Reshape", [g.node("Cast", [g.init("w.d", d)], to=TensorProto.FLOAT), g.const([-1])])
        y = g.node("MatMulNBits", [x, g.init("w.q", packed), scales], domain="com.microsoft", K=K, N=N, bits=4, block_size=BLOCK)
    elif form.startswith("nbits-b"):
        bs = int(form[len("nbits-b"):])
        nb = -(-K // bs)  # MatMulNBits pads K up to whole blocks
        w = np.pad(dense(*parts), ((0, 0), (0, nb * bs - K))).reshape(N, nb, bs)
        scale = np.abs(w).max(axis=-1) / 7
        q = (np.clip(np.round(w / np.maximum(scale, 1e-30)[..., None]), -8, 7) + 8).astype(np.uint8)
        pk = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
        y = g.node("MatMulNBits", [x, g.init("w.q", pk), g.init("w.s", scale.astype(np.float32).reshape(-1))], domain="com.microsoft", K=K, N=N, bits=4, block_size=bs)
    elif form == "int8-dqmm":
        w = dense(*parts)
        scale = np.abs(w).max(axis=1) / 127
        q = np.clip(np.round(w / scale[:, None]), -127, 127).astype(np.int8).T.copy()  # [K, N]
        y = g.node("DynamicQuantizeMatMul", [x, g.init("w.q", q), g.init("w.s", scale.astype(np.float32))], domain="com.microsoft")
    elif form in ("u8-mmint", "u4-mmint"):
        y = block_int8_linear(g, x, parts, packed_n=form == "u4-mmint")
    elif form == "dql-u4":
        qt = uint4_init(g, "w.q4", unpack_q4(packed).reshape(N, K).T)  # [K, N]
        zp = uint4_init(g, "w.zp", np.full((K // BLOCK, N), 8, np.uint8))
        dt = g.node("Cast", [g.init("w.d", np.ascontiguousarray(d.T))], to=TensorProto.FLOAT)  # [K/32, N]
        w = g.node("DequantizeLinear", [qt, dt, zp], axis=0, block_size=BLOCK)
        off = (m.astype(np.float32) + 8 * d.astype(np.float32)).T.copy()  # [K/32, N]
        sums = g.node("ReduceSum", [g.node("Reshape", [x, g.const([1, -1, K // BLOCK, BLOCK])]), g.const([-1])], keepdims=0)
        y = g.node("Add", [g.node("MatMul", [x, w]), g.node("MatMul", [sums, g.init("w.off", off)])])
    elif form == "dequant":
        y = q4_1_linear_dequant(g, x, "w", parts, K)
    elif form == "f16":
        y = g.node("MatMul", [x, g.node("Cast", [g.init("w", dense(*parts).T.astype(np.float16).copy())], to=TensorProto.FLOAT)])
    elif form == "f32":
        y = g.node("MatMul", [x, g.init("w", dense(*parts).T.copy())])
    else:
        raise ValueError(form)
    g.nodes[-1].output[0] = "y"
    g.output("y", TensorProto.FLOAT, [1, "S", N])
    return g.model(form)


# form -> bits per weight resident (the table above)
FORMS = {"nbits": 5, "nbits-acc4": 5, "nbits-sym": 4.5, "nbits-b64": 4.5, "nbits-b128": 4.25, "nbits-b256": 4.125, "int8-dqmm": 8,
         "u8-mmint": 8.5, "u4-mmint": 5, "dql-u4": 5, "dequant": 5, "f16": 16, "f32": 32}

if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    parts = blocks(np.random.default_rng(0))
    for form in FORMS:
        onnx.save(build(form, parts), out / f"{form}.onnx")
    print(json.dumps(FORMS))
