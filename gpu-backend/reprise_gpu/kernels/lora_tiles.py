"""Decode LoRA over sorted token tiles (vLLM v1 Punica style): split-K shrink, then expand.

BGMV (lora_shrink.py) runs one token per program and walks K in 64 dependent steps: 39 us for one token
at the 8B shape (3.7 MB of A and B^T: 95 GB/s of a 4.8 TB/s part), and every token re-reads its adapter.
Here the host sorts a decode batch's tokens by adapter slot (`order`, a permutation) and cuts each slot's
run into tiles of at most BLOCK_M tokens; tile i is `tiles[i] = (start, end, slot)` into `order`, unused
tiles have slot -1, tokens without an adapter are in no tile. The table always has T rows (a slot's run
of n tokens takes cdiv(n, BLOCK_M) <= n tiles), so both grids depend only on T: one captured CUDA graph
replays any mix of adapters.

Shrink, grid (T tiles, SPLIT_K, n_slices * R_MAX / BLOCK_R): program (i, p, s, rb) reads its tile's x rows
(gathered through `order`) and rows rb*BLOCK_R.. of A[slot, mod0 + s] over K range p, once per tile:
    y_part[p, q, s, rows] = sum_{k in range p} x[order[q], k] * A[rows, k]      for q in [start, end)
SPLIT_K = cdiv(K, BLOCK_K * k_iters(T, K)): each program does a few dependent steps, not K / 64. No float
atomics: the SPLIT_K partials (float32 [SPLIT_K, T, n_slices, R_MAX], indexed by sorted position q; tiny)
are summed by the expand in the fixed order p = 0, 1, ..., so results are run-to-run bit-identical.

Expand, grid (T tiles, sum_s cdiv(N_s, BLOCK_N)): program (i, nb) owns BLOCK_N columns of one slice for
its tile's tokens: y = sum_p y_part[p] (fixed order), then [BLOCK_M, BLOCK_R] x [BLOCK_R, BLOCK_N] tl.dot
over the rank, B^T read once per tile, out[order[q], n] += scaling * acc (each element one program).
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from .lora_expand import _slice
from .lora_shrink import INTERPRETED, R_MAX, lora_dot

TILE_M = 16            # tokens per tile: tl.dot's minimum M; decode batches rarely share an adapter more
TILE_R = 32            # rank rows per shrink program (masked past the rank; masked loads fetch nothing)
TILE_K = 128           # K per step
K_ITERS: int | None = None   # dependent K steps per shrink program (sets SPLIT_K); None: k_iters(T, K)
EXP_R = 16             # rank rows per expand step
EXP_N = 128            # output columns per expand program


def k_iters(T: int, K: int) -> int:
    """K steps per shrink program for a batch of T tokens. Measured at the 8B shape (K = 4096, H200,
    bench/results/lora-tiles-h200-2026-12-02): splitting K pays while few tiles fill the GPU (T = 1: 7.7 us
    with 4 steps vs 20.1 whole; T = 16: 29.1 with 8 vs 32.9 with 4), and costs from T = 64 on, where the
    partials' traffic outweighs the parallelism (T = 128 Zipf: 111.8 us whole vs 155.6 with 4 steps)."""
    if K_ITERS is not None:
        return K_ITERS
    return 4 if T <= 8 else 8 if T <= 32 else triton.cdiv(K, TILE_K)


def build_tiles(token_slots: np.ndarray, order: np.ndarray | None = None, tiles: np.ndarray | None = None,
                block_m: int = TILE_M) -> tuple[np.ndarray, np.ndarray]:
    """Host side: (order int32 [T], tiles int32 [T, 3] of (start, end, slot)) for token_slots [T].

    Writes into `order` / `tiles` when given (the runner's pinned graph-input views). Tokens are sorted by
    slot (stable, so a tile's tokens keep batch order); slot -1 tokens sort first and get no tile."""
    slots = np.asarray(token_slots, dtype=np.int32)
    T = slots.shape[0]
    order = np.empty(T, dtype=np.int32) if order is None else order
    tiles = np.empty((T, 3), dtype=np.int32) if tiles is None else tiles
    perm = np.argsort(slots, kind="stable")
    order[:] = perm
    s = slots[perm]
    first = int(np.searchsorted(s, 0))                      # tokens [first, T) have an adapter
    tiles[:, 0] = tiles[:, 1] = 0
    tiles[:, 2] = -1
    if first == T:
        return order, tiles
    change = np.flatnonzero(np.diff(s[first:])) + 1 + first
    run_start = np.concatenate([[first], change])
    run_end = np.concatenate([change, [T]])
    n_tiles = (run_end - run_start + block_m - 1) // block_m
    tile_run = np.repeat(np.arange(run_start.size), n_tiles)
    within = np.arange(tile_run.size) - np.repeat(np.cumsum(n_tiles) - n_tiles, n_tiles)
    start = run_start[tile_run] + within * block_m
    k = tile_run.size                                       # <= T: each tile holds at least one token
    tiles[:k, 0] = start
    tiles[:k, 1] = np.minimum(start + block_m, run_end[tile_run])
    tiles[:k, 2] = s[start]
    return order, tiles


@triton.jit
def _tile_shrink_kernel(
    # pointers
    x_ptr, pool_ptr, off_ptr, rank_ptr, order_ptr, tile_ptr, yp_ptr,
    # strides (rows of x contiguous; y_part contiguous [SPLIT, T, n_slices, R_MAX])
    stride_xm, stride_os, stride_om, stride_rs, stride_yp, stride_ym, stride_ys,
    # meta-parameters
    K: tl.constexpr, MOD0: tl.constexpr, R_BLOCKS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr, K_ITERS: tl.constexpr, DOT_IN_F32: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    i = tl.program_id(0)
    p = tl.program_id(1)
    s = tl.program_id(2) // R_BLOCKS
    rb = tl.program_id(2) % R_BLOCKS
    slot = tl.load(tile_ptr + 3 * i + 2)
    if slot < 0:
        return
    r = tl.load(rank_ptr + slot * stride_rs + MOD0 + s)
    if rb * BLOCK_R >= r:
        return
    start = tl.load(tile_ptr + 3 * i)
    end = tl.load(tile_ptr + 3 * i + 1)
    q = start + tl.arange(0, BLOCK_M)
    qmask = q < end
    tok = tl.load(order_ptr + q, mask=qmask, other=0).to(tl.int64)
    rows = rb * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < r
    offs = tl.load(off_ptr + slot * stride_os + (MOD0 + s) * stride_om + rows, mask=rmask, other=0).to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for it in range(K_ITERS):                  # K_ITERS * BLOCK_K of K: a few dependent steps, not K / 64
        k = (p * K_ITERS + it) * BLOCK_K + tl.arange(0, BLOCK_K)
        km = k < K
        xt = tl.load(x_ptr + tok[:, None] * stride_xm + k[None, :], mask=qmask[:, None] & km[None, :], other=0.0)
        at = tl.load(pool_ptr + offs[None, :] + k[:, None], mask=km[:, None] & rmask[None, :], other=0.0)
        acc = lora_dot(xt, at, acc, pool_ptr, DOT_IN_F32, DOT_PRECISION)
    yp = yp_ptr + p.to(tl.int64) * stride_yp + q.to(tl.int64)[:, None] * stride_ym + s * stride_ys + rows[None, :]
    tl.store(yp, acc, mask=qmask[:, None] & rmask[None, :])


@triton.jit
def _tile_expand_kernel(
    # pointers
    out_ptr, yp_ptr, pool_ptr, off_ptr, rank_ptr, scale_ptr, order_ptr, tile_ptr,
    # slices (up to 3): output column start, width, and first column block of slices 1 and 2
    START0, START1, START2, N0, N1, N2, NB1, NB2,
    # strides
    stride_outm, stride_yp, stride_ym, stride_ys, stride_os, stride_om, stride_rs,
    # meta-parameters
    MOD0: tl.constexpr, SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr, DOT_IN_F32: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    i = tl.program_id(0)
    g = tl.program_id(1)                       # column block over all slices: no program of a short slice idles
    slot = tl.load(tile_ptr + 3 * i + 2)
    if slot < 0:
        return
    s = (g >= NB1).to(tl.int32) + (g >= NB2).to(tl.int32)
    nb = g - _slice(s, 0, NB1, NB2)
    N = _slice(s, N0, N1, N2)
    r = tl.load(rank_ptr + slot * stride_rs + MOD0 + s)
    if r == 0:
        return
    start = tl.load(tile_ptr + 3 * i)
    end = tl.load(tile_ptr + 3 * i + 1)
    q = start + tl.arange(0, BLOCK_M)
    qmask = q < end
    n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    off_row = off_ptr + slot * stride_os + (MOD0 + s) * stride_om
    y_rows = yp_ptr + q.to(tl.int64)[:, None] * stride_ym + s * stride_ys
    j0 = 0
    while j0 < r:
        j = j0 + tl.arange(0, BLOCK_R)
        jm = j < r
        ym = qmask[:, None] & jm[None, :]
        yt = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
        for p in range(SPLIT):                 # the split-K partials, summed in a fixed order: deterministic
            yt += tl.load(y_rows + p * stride_yp + j[None, :], mask=ym, other=0.0)
        offs = tl.load(off_row + j, mask=jm, other=0).to(tl.int64)
        bt = tl.load(pool_ptr + offs[:, None] + n[None, :], mask=jm[:, None] & nmask[None, :], other=0.0)
        acc = lora_dot(yt, bt, acc, pool_ptr, DOT_IN_F32, DOT_PRECISION)
        j0 += BLOCK_R
    scale = tl.load(scale_ptr + slot)
    tok = tl.load(order_ptr + q, mask=qmask, other=0).to(tl.int64)
    o_ptrs = out_ptr + tok[:, None] * stride_outm + _slice(s, START0, START1, START2) + n[None, :]
    om = qmask[:, None] & nmask[None, :]
    o = tl.load(o_ptrs, mask=om, other=0.0).to(tl.float32)
    tl.store(o_ptrs, (o + scale * acc).to(out_ptr.dtype.element_ty), mask=om)


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"       # no TF32 in float32


def tile_shrink(x: torch.Tensor, pool: torch.Tensor, a_off: torch.Tensor, ranks: torch.Tensor, order: torch.Tensor,
                tiles: torch.Tensor, mod0: int, n_slices: int) -> torch.Tensor:
    """Split-K partials of y = x A^T over tiles -> float32 [SPLIT_K, T, n_slices, R_MAX], row q = token order[q].

    x [T, K]; order int32 [T]; tiles int32 [T, 3] (build_tiles); the rest as lora_shrink.bgmv_shrink.
    Entries of tokens without an adapter, or past a token's rank, are left unwritten."""
    assert x.dim() == 2 and x.stride(1) == 1 and pool.dtype == x.dtype and tiles.shape == (x.shape[0], 3)
    assert order.dtype == tiles.dtype == torch.int32 and tiles.is_contiguous() and a_off.shape[2] == R_MAX
    T, K = x.shape
    kit = k_iters(T, K)
    split = triton.cdiv(K, TILE_K * kit)
    yp = torch.empty(split, T, n_slices, R_MAX, dtype=torch.float32, device=x.device)
    if T:
        _tile_shrink_kernel[(T, split, n_slices * (R_MAX // TILE_R))](
            x, pool, a_off, ranks, order, tiles, yp, x.stride(0), a_off.stride(0), a_off.stride(1), ranks.stride(0),
            yp.stride(0), yp.stride(1), yp.stride(2), K=K, MOD0=mod0, R_BLOCKS=R_MAX // TILE_R, BLOCK_M=TILE_M,
            BLOCK_R=TILE_R, BLOCK_K=TILE_K, K_ITERS=kit, DOT_IN_F32=INTERPRETED,
            DOT_PRECISION=_precision(x.dtype), num_warps=4)
    return yp


def tile_expand(out: torch.Tensor, y_part: torch.Tensor, pool: torch.Tensor, b_off: torch.Tensor, ranks: torch.Tensor,
                scaling: torch.Tensor, order: torch.Tensor, tiles: torch.Tensor, mod0: int,
                slices: tuple[tuple[int, int], ...]) -> None:
    """out[order[q], slice s] += scaling[slot] * (sum_p y_part[p, q, s, :r]) @ B[slot, mod0 + s][:, :r].T."""
    assert 1 <= len(slices) <= 3 and out.dim() == 2 and out.stride(1) == 1 and pool.dtype == out.dtype
    assert y_part.dtype == torch.float32 and y_part.shape[1:] == (out.shape[0], len(slices), R_MAX)
    assert y_part.is_contiguous() and scaling.dtype == torch.float32
    starts = [a for a, _ in slices] + [0] * (3 - len(slices))
    sizes = [n for _, n in slices] + [0] * (3 - len(slices))
    nbs = [triton.cdiv(n, EXP_N) for n in sizes]
    T = out.shape[0]
    if T:
        _tile_expand_kernel[(T, sum(nbs))](
            out, y_part, pool, b_off, ranks, scaling, order, tiles, *starts, *sizes, nbs[0], nbs[0] + nbs[1],
            out.stride(0), y_part.stride(0), y_part.stride(1), y_part.stride(2), b_off.stride(0), b_off.stride(1),
            ranks.stride(0), MOD0=mod0, SPLIT=y_part.shape[0], BLOCK_M=TILE_M, BLOCK_R=EXP_R, BLOCK_N=EXP_N,
            DOT_IN_F32=INTERPRETED, DOT_PRECISION=_precision(out.dtype), num_warps=4)


def unsort_partials(y_part: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """sum_p y_part[p] back in batch order, [T, n_slices, R_MAX] (tests compare it with lora_shrink_ref)."""
    y = torch.empty_like(y_part[0])
    y[order.long()] = y_part.sum(0)
    return y
