"""The embedding + lm_head graph: the tied table in row slices, shared by both ends of the model.

Interface:
    inputs   input_ids int64 [1, S]; hidden float32 [1, 1, 576] (last position, before the final norm);
             want_logits bool [] (scalar)
    outputs  out float32: logits [1, 1, 49152] when want_logits, else embeds [1, S, 576]
An If node runs only the branch asked for (onnxruntime evaluates every node a graph has, whatever
the fetches, so the two ends cannot simply be two outputs).

The table is dequantized to float32 on every call (by MatMulNBits for q41, by Cast and Mul for q8:
ort-web's wasm MatMulNBits does it block by block, several times slower, see
bench/results/edge-op-forms-*), so it is cut into VOCAB/SLICE row slices: a 2048-row slice needs a
4.7 MB temporary, the whole table would need 113 MB.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from .graph import Graph
from .weights import BLOCK, HIDDEN, VOCAB

SLICE = 2048  # vocab rows per slice (VOCAB is a multiple)


def _branch(g: Graph, k: int):
    """A subgraph with unique node names whose constants go to g (an If branch reads them from the
    outer scope; ort-web cannot load a subgraph's own external-data initializers from memory)."""
    sub = Graph(opset=g.opset)
    sub.n = g.n + 1_000_000 * k
    sub.inits = g.inits
    return sub


def build_head(weights: dict, table: str, parts: tuple, form: str = "dequant"):
    """table "q8": parts = (int8 q [VOCAB, 18, 32], d float16 [VOCAB, 18]) -- the GGUF's Q8_0, exact;
    table "q41": parts = (packed uint8 [VOCAB, 18, 16], d float16, m float16) -- Q4_1-style blocks.
    form (q8 only; q41 is always MatMulNBits): "dequant" keeps int8 and dequantizes with Cast and Mul,
    "nbits" keeps uint8 q+128 for an 8-bit MatMulNBits (onnxruntime-node's fast kernel)."""
    nbits8 = table == "q8" and form == "nbits"
    if nbits8:
        parts = ((parts[0].astype(np.int16) + 128).astype(np.uint8), parts[1])
    g = Graph()
    f32 = TensorProto.FLOAT
    g.input("input_ids", TensorProto.INT64, [1, "S"])
    g.input("hidden", f32, [1, 1, HIDDEN])
    g.input("want_logits", TensorProto.BOOL, [])
    nb = HIDDEN // BLOCK
    slices = []
    for c in range(VOCAB // SLICE):
        rows = slice(c * SLICE, (c + 1) * SLICE)
        names = [g.init(f"table.{c}", parts[0][rows]), g.init(f"table.{c}.d", parts[1][rows])]
        if table == "q41":
            names.append(g.init(f"table.{c}.m", parts[2][rows]))
        slices.append(names)

    # embeds: each id's row from its slice (gather everywhere with a clamped index, keep one)
    e = _branch(g, 1)
    slice_of = e.node("Div", ["input_ids", e.const(SLICE)])
    row_in_slice = e.node("Mod", ["input_ids", e.const(SLICE)])
    x = None
    for c, names in enumerate(slices):
        mine = e.node("Equal", [slice_of, e.const(c)])  # [1, S]
        idx = e.node("Where", [mine, row_in_slice, e.const(0)])
        rows = e.node("Gather", [names[0], idx], axis=0)  # [1, S, 18, 32] or [1, S, 18, 16]
        d = e.node("Unsqueeze", [e.node("Cast", [e.node("Gather", [names[1], idx], axis=0)], to=f32), e.const([-1])])
        if table == "q41":  # low nibble = even element, high nibble = odd element (MatMulNBits packing)
            four = e.const(4, np.uint8)
            lo = e.node("BitShift", [e.node("BitShift", [rows, four], direction="LEFT"), four], direction="RIGHT")
            hi = e.node("BitShift", [rows, four], direction="RIGHT")
            pair = e.node("Concat", [e.node("Unsqueeze", [lo, e.const([-1])]), e.node("Unsqueeze", [hi, e.const([-1])])], axis=-1)
            q = e.node("Cast", [e.node("Reshape", [pair, e.const([1, -1, nb, BLOCK])])], to=f32)
            m = e.node("Unsqueeze", [e.node("Cast", [e.node("Gather", [names[2], idx], axis=0)], to=f32), e.const([-1])])
            vals = e.node("Add", [e.node("Mul", [q, d]), m])
        else:
            q = e.node("Cast", [rows], to=f32)
            vals = e.node("Mul", [e.node("Sub", [q, e.const(128.0, np.float32)]) if nbits8 else q, d])
        vals = e.node("Reshape", [vals, e.const([1, -1, HIDDEN])])
        x = vals if x is None else e.node("Where", [e.node("Unsqueeze", [mine, e.const([-1])]), vals, x])
    e.node("Identity", [x], ["embeds"])

    # logits of the last position
    lg = _branch(g, 2)
    h = lg.rms("hidden", weights["norm"], "final_norm")
    outs = []
    for names in slices:
        d = lg.node("Cast", [names[1]], to=f32)
        if table == "q41":  # d*(q - 8) + (m + 8d) per block, as the decoder layers (graph_layers.q4_1_linear)
            main = lg.node("MatMulNBits", [h, names[0], lg.node("Reshape", [d, lg.const([-1])])], domain="com.microsoft",
                           K=HIDDEN, N=SLICE, bits=4, block_size=BLOCK)
            off = lg.node("Add", [lg.node("Cast", [names[2]], to=f32), lg.node("Mul", [d, lg.const(8.0, np.float32)])])
            sums = lg.node("ReduceSum", [lg.node("Reshape", [h, lg.const([1, -1, nb, BLOCK])]), lg.const([-1])], keepdims=0)
            outs.append(lg.node("Add", [main, lg.node("MatMul", [sums, lg.node("Transpose", [off], perm=[1, 0])])]))
        elif nbits8:
            outs.append(lg.node("MatMulNBits", [h, names[0], lg.node("Reshape", [d, lg.const([-1])])], domain="com.microsoft",
                                K=HIDDEN, N=SLICE, bits=8, block_size=BLOCK))
        else:  # d*q per block by Cast and Mul (a 4.7 MB float32 temporary), then h @ W^T (Gemm reads W transposed).
            # The table slice goes through a Reshape whose shape waits for the previous slice's logits
            # (a 1.2 MB copy; Graph.one_after), so that ort dequantizes one slice at a time instead of
            # several ahead. DequantizeLinear is ~4x slower than Cast and Mul on int8 here.
            one = lg.one_after(outs[-1] if outs else h, TensorProto.INT64)
            q = lg.node("Reshape", [names[0], lg.node("Mul", [lg.const([SLICE, nb, BLOCK]), one])])
            w = lg.node("Reshape", [lg.node("Mul", [lg.node("Cast", [q], to=f32), lg.node("Unsqueeze", [d, lg.const([-1])])]),
                                    lg.const([SLICE, HIDDEN])])
            outs.append(lg.node("Gemm", [lg.node("Reshape", [h, lg.const([1, HIDDEN])]), w], transB=1))
    if table == "q8" and not nbits8:
        lg.node("Reshape", [lg.node("Concat", outs, axis=-1), lg.const([1, 1, VOCAB])], ["logits"])
    else:
        lg.node("Concat", outs, ["logits"], axis=-1)

    def subgraph(b: Graph, out: str):
        return helper.make_graph(b.nodes, f"head_{out}", [], [helper.make_tensor_value_info(out, f32, [1, "rows", "cols"])])

    g.node("If", ["want_logits"], ["out"], then_branch=subgraph(lg, "logits"), else_branch=subgraph(e, "embeds"))
    g.output("out", f32, [1, "rows", "cols"])
    return g.model(f"smollm2_head_{table}")
