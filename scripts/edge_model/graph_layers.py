"""The decoder-block graph of a group of consecutive layers (onnxruntime-web runs one session per group).

Interface (batch 1, S new tokens at positions P .. P+S-1, KV token-major):
    inputs   hidden float32 [1, S, 576] (the residual stream entering the group); position_ids int64 [1, S];
             past_key.{i} / past_value.{i} float16 [1, P, 3, 64] for each layer i of the group
    outputs  hidden_out float32 [1, S, 576]; key.{i} / value.{i} float16 [1, S, 3, 64] (new tokens only)
Keys are after RoPE. Token-major KV lets the caller append a turn's rows to its cache without moving
the rows before them."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from .graph import Graph
from .weights import BLOCK, FFN, HEAD_DIM, HEADS, HIDDEN, KV_HEADS, unpack_q4


def uint4_init(g: Graph, name: str, q: np.ndarray) -> str:
    """A uint4 initializer of the values q (0..15, any shape with an even size), two per byte, the
    first element in the low nibble (ONNX's 4-bit packing)."""
    flat = np.ascontiguousarray(q, np.uint8).reshape(-1)
    g.inits.append(helper.make_tensor(name, TensorProto.UINT4, list(q.shape), (flat[0::2] | (flat[1::2] << 4)).tobytes(), raw=True))
    return name


def q4_1_linear_dequant(g: Graph, x: str, name: str, parts, k: int, after: str | None = None) -> str:
    """Form "dequant" (the edge's: the fastest in ort-web's wasm build): x @ W^T for a Q4_1 weight,
    W[n, k] = d*q + m per block of 32 along K (ggml's own formula).

    The 4-bit values stay resident as uint4 [K, N] and d, m as float16 (5 bits per weight). Per run
    DequantizeLinear (blocks of 32 along K, no zero point) writes d*q as a float32 temporary, then one
    float32 MatMul; the m term is blocksum(x) @ m, a K/32-deep MatMul. MatMulNBits keeps the same
    bytes, but its wasm fallback dequantizes block by block, 3.5x slower per call
    (bench/results/edge-op-forms-*). The scale is multiplied by Graph.one_after(`after`): x, or the
    output of the Linear that must finish first when two Linears share an input, so that ort runs
    the dequantization right before its MatMul; without it ort dequantized several Linears ahead and
    held their float32 copies at once (+15 MiB per group run). Constant folding stays off
    (onnx-session.ts), which keeps the float32 copy a temporary instead of 32 bits per weight resident.
    """
    packed, d16, m16 = parts
    n, nb = d16.shape
    qt = uint4_init(g, name + ".q", unpack_q4(packed).reshape(n, k).T)  # [K, N]
    one = g.one_after(after or x, TensorProto.FLOAT)
    d = g.node("Mul", [g.node("Cast", [g.init(name + ".d", np.ascontiguousarray(d16.T))], to=TensorProto.FLOAT), one])  # [K/32, N]
    w = g.node("DequantizeLinear", [qt, d], axis=0, block_size=BLOCK)  # [K, N] float32
    m = g.node("Cast", [g.init(name + ".m", np.ascontiguousarray(m16.T))], to=TensorProto.FLOAT)  # [K/32, N]
    sums = g.node("ReduceSum", [g.node("Reshape", [x, g.const([1, -1, k // BLOCK, BLOCK])]), g.const([-1])], keepdims=0)
    return g.node("Add", [g.node("MatMul", [x, w]), g.node("MatMul", [sums, m])])


def q4_1_linear_nbits(g: Graph, x: str, name: str, parts, k: int, after: str | None = None) -> str:
    """Form "nbits" (onnxruntime-node's fast one, the bench's peer): x @ W^T for a Q4_1 weight,
    W = d*(q - 8) + (m + 8d) per block of 32 along K.

    MatMulNBits(x, q, d) gives the first term; the second is sum over blocks of blocksum(x) * (m + 8d),
    one small float32 MatMul. d and m stay float16 initializers and are widened per run (reads N*K/16
    bytes, writes N*K/4), which keeps the resident weights at 5 bits per weight instead of 6; constant
    folding must stay off for these casts (onnx-session.ts: disable_specified_optimizers).
    """
    packed, d16, m16 = parts
    n = packed.shape[0]
    d = g.node("Cast", [g.init(name + ".d", d16)], to=TensorProto.FLOAT)  # [N, K/32]
    scales = g.node("Reshape", [d, g.const([-1])])
    main = g.node("MatMulNBits", [x, g.init(name + ".q", packed), scales], domain="com.microsoft",
                  K=k, N=n, bits=4, block_size=BLOCK)
    off = g.node("Add", [g.node("Cast", [g.init(name + ".m", m16)], to=TensorProto.FLOAT),
                         g.node("Mul", [d, g.const(8.0, np.float32)])])
    off_t = g.node("Transpose", [off], perm=[1, 0])  # [K/32, N]
    sums = g.node("ReduceSum", [g.node("Reshape", [x, g.const([1, -1, k // BLOCK, BLOCK])]), g.const([-1])], keepdims=0)
    return g.node("Add", [main, g.node("MatMul", [sums, off_t])])


LINEAR = {"dequant": q4_1_linear_dequant, "nbits": q4_1_linear_nbits}  # form -> builder (files.FORMS)


def build_layers(weights: dict, first: int, last: int, form: str = "dequant"):
    """ONNX model of layers [first, last), its Linears in `form`."""
    q4_1_linear = LINEAR[form]
    g = Graph(opset=21)
    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    x = g.input("hidden", f32, [1, "S", HIDDEN])
    pos = g.input("position_ids", TensorProto.INT64, [1, "S"])
    for i in range(first, last):
        g.input(f"past_key.{i}", f16, [1, "P", KV_HEADS, HEAD_DIM])
        g.input(f"past_value.{i}", f16, [1, "P", KV_HEADS, HEAD_DIM])
    cos, sin = g.rope_tables(pos)
    mask = g.causal_mask(pos, g.shape_dim(f"past_key.{first}", 1), g.shape_dim("hidden", 1), HEADS // KV_HEADS)
    scale = g.const(1.0 / np.sqrt(HEAD_DIM), np.float32)  # 1/8: exact, so scaling q first equals HF's scores*scale
    qkv_split = g.const([HIDDEN, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM])
    for i in range(first, last):
        L, p = weights["layers"][i], f"layers.{i}."
        h = g.rms(x, L["attn_norm"], p + "attn_norm")
        q, k, v = g.node("Split", [q4_1_linear(g, h, p + "qkv", L["qkv"], HIDDEN), qkv_split], 3, axis=-1)
        q = g.rope(g.node("Reshape", [q, g.const([1, -1, HEADS, HEAD_DIM])]), cos, sin)       # [1, S, 9, 64]
        k = g.rope(g.node("Reshape", [k, g.const([1, -1, KV_HEADS, HEAD_DIM])]), cos, sin)    # [1, S, 3, 64]
        v = g.node("Reshape", [v, g.const([1, -1, KV_HEADS, HEAD_DIM])])
        k16 = g.node("Identity", [g.kv_round(k)], [f"key.{i}"])
        v16 = g.node("Identity", [g.kv_round(v)], [f"value.{i}"])
        g.output(f"key.{i}", f16, [1, "S", KV_HEADS, HEAD_DIM])
        g.output(f"value.{i}", f16, [1, "S", KV_HEADS, HEAD_DIM])

        def all_tokens(past: str, new: str) -> str:  # [1, 3, P + S, 64] float32
            cat = g.node("Concat", [g.node("Cast", [past], to=f32), g.node("Cast", [new], to=f32)], axis=1)
            return g.node("Transpose", [cat], perm=[0, 2, 1, 3])

        k_all, v_all = all_tokens(f"past_key.{i}", k16), all_tokens(f"past_value.{i}", v16)
        # the 3 query heads of one KV head stacked along the query axis (GQA without repeat_kv): [1, 3, 3S, 64]
        qg = g.node("Reshape", [g.node("Mul", [g.node("Transpose", [q], perm=[0, 2, 1, 3]), scale]),
                                g.const([1, KV_HEADS, -1, HEAD_DIM])])
        scores = g.node("Add", [g.node("MatMul", [qg, g.node("Transpose", [k_all], perm=[0, 1, 3, 2])]), mask])
        ctx = g.node("MatMul", [g.node("Softmax", [scores], axis=-1), v_all])
        ctx = g.node("Reshape", [ctx, g.const([1, HEADS, -1, HEAD_DIM])])
        ctx = g.node("Reshape", [g.node("Transpose", [ctx], perm=[0, 2, 1, 3]), g.const([1, -1, HIDDEN])])
        x = g.node("Add", [x, q4_1_linear(g, ctx, p + "o", L["o"], HIDDEN)])
        h = g.rms(x, L["ffn_norm"], p + "ffn_norm")
        gate = q4_1_linear(g, h, p + "gate", L["gate"], HIDDEN)
        up = q4_1_linear(g, h, p + "up", L["up"], HIDDEN, after=gate)  # one float32 weight at a time
        act = g.node("Mul", [g.node("Mul", [gate, g.node("Sigmoid", [gate])]), up])  # SiLU(gate) * up
        x = g.node("Add", [x, q4_1_linear(g, act, p + "down", L["down"], FFN)])
    g.node("Identity", [x], ["hidden_out"])
    g.output("hidden_out", f32, [1, "S", HIDDEN])
    return g.model(f"smollm2_layers_{first}_{last}")
