"""The one dispatch point between the fused Triton kernels and their PyTorch references.

    "auto"       Triton for CUDA tensors, the PyTorch references elsewhere (the default)
    "triton"     Triton always (on CPU tensors through TRITON_INTERPRET=1: tests, kernel counts)
    "reference"  the PyTorch references even on CUDA: the unfused baseline (bench --variants)

Paged attention has no graph-capturable reference, so it runs the Triton kernel on CUDA in every mode
(and on CPU tensors in mode "triton").
The mode is read when a forward runs: a CUDA graph keeps the kernels of the mode it was captured in.

Decode LoRA has two Triton paths, so one benchmark run can time both (REPRISE_LORA_DECODE, or the
lora_decode() block): "tiles" (sorted token tiles, split-K shrink: kernels/lora_tiles.py; the default)
and "bgmv" (one token per program: lora_shrink.py / lora_expand.py). Graphs keep the one they captured.
"""

from __future__ import annotations

import contextlib
import os

import torch

from ..kernels.rmsnorm import add_rms_norm as _add_rms_norm, add_rms_norm_ref, rms_norm as _rms_norm, rms_norm_ref
from ..kernels.rope_kv import rope_store_kv as _rope_store_kv, rope_store_kv_ref
from ..kernels.lora_expand import bgmv_expand, lora_expand_ref, sgmv_expand
from ..kernels.lora_shrink import bgmv_shrink, lora_shrink_ref, sgmv_shrink
from ..kernels.lora_tiles import tile_expand, tile_shrink
from ..kernels.silu_mul import silu_mul as _silu_mul, silu_mul_ref

MODES = ("auto", "triton", "reference")
_mode = "auto"
LORA_DECODE = ("tiles", "bgmv")
_lora_decode = os.environ.get("REPRISE_LORA_DECODE", "tiles")
if _lora_decode not in LORA_DECODE:
    raise ValueError(f"REPRISE_LORA_DECODE={_lora_decode!r}; known: {LORA_DECODE}")


def use_triton(x: torch.Tensor) -> bool:
    return _mode == "triton" or (_mode == "auto" and x.is_cuda)


def use_triton_attention(q: torch.Tensor) -> bool:
    return q.is_cuda or _mode == "triton"


@contextlib.contextmanager
def kernel_mode(mode: str):
    """Run the block with the fused ops dispatched as `mode` (one of MODES); restores the previous mode."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"unknown kernel mode {mode!r}; known: {MODES}")
    prev, _mode = _mode, mode
    try:
        yield
    finally:
        _mode = prev


@contextlib.contextmanager
def lora_decode(kind: str):
    """Run the block (and capture its graphs) with decode LoRA on `kind`, one of LORA_DECODE."""
    global _lora_decode
    if kind not in LORA_DECODE:
        raise ValueError(f"unknown LoRA decode kernels {kind!r}; known: {LORA_DECODE}")
    prev, _lora_decode = _lora_decode, kind
    try:
        yield
    finally:
        _lora_decode = prev


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return (_rms_norm if use_triton(x) else rms_norm_ref)(x, weight, eps)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return (_add_rms_norm if use_triton(x) else add_rms_norm_ref)(x, residual, weight, eps)


def rope_store_kv(q, k, v, cos, sin, k_cache, v_cache, slot_mapping) -> None:
    (_rope_store_kv if use_triton(q) else rope_store_kv_ref)(q, k, v, cos, sin, k_cache, v_cache, slot_mapping)


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    return (_silu_mul if use_triton(x) else silu_mul_ref)(x)


def lora_add(out: torch.Tensor, x: torch.Tensor, lora, layer: int, mod0: int,
             slices: tuple[tuple[int, int], ...]) -> None:
    """out += LoRA(x) in place for each token's adapter (layers/linear.py): shrink, then expand; SGMV over
    prefill segments; for decode, sorted token tiles (or BGMV per token, see lora_decode); Triton on CUDA,
    the float32 loops elsewhere."""
    pool, n = lora.pool[layer], len(slices)
    if not use_triton(x):
        y = lora_shrink_ref(x, pool, lora.a_off, lora.ranks, lora.token_slots, mod0, n)
        lora_expand_ref(out, y, pool, lora.b_off, lora.ranks, lora.scaling, lora.token_slots, mod0, slices)
    elif lora.segmented:
        y = sgmv_shrink(x, pool, lora.a_off, lora.ranks, lora.seg_starts, lora.seg_slots, lora.max_seg_len, mod0, n)
        sgmv_expand(out, y, pool, lora.b_off, lora.ranks, lora.scaling, lora.seg_starts, lora.seg_slots,
                    lora.max_seg_len, mod0, slices)
    elif lora.tiles is not None and _lora_decode == "tiles":
        y = tile_shrink(x, pool, lora.a_off, lora.ranks, lora.order, lora.tiles, mod0, n)
        tile_expand(out, y, pool, lora.b_off, lora.ranks, lora.scaling, lora.order, lora.tiles, mod0, slices)
    else:
        y = bgmv_shrink(x, pool, lora.a_off, lora.ranks, lora.token_slots, mod0, n)
        bgmv_expand(out, y, pool, lora.b_off, lora.ranks, lora.scaling, lora.token_slots, mod0, slices)
