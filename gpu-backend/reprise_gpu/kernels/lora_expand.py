"""LoRA expand, out += scaling * y B^T, added in place to the base projection's output (Punica SGMV/BGMV).

Punica: Chen et al. (2023); S-LoRA: Sheng et al. (2023). Companion of lora_shrink.py: y float32
[T, n_slices, R_MAX] is its output; B is stored transposed, row j of B^T for (slot, module m) being
`pool[b_off[slot, m, j] : + N_m]` in one layer's slab of the paged KV pool. Slice s of a fused projection
(module mod0 + s) owns output columns [start_s, start_s + N_s) (q | k | v of qkv, gate | up of gate_up).

    out[t, start_s + n] += scaling[slot(t)] * sum_{j < rank} y[t, s, j] * B[slot(t), mod0 + s][n, j]

in float32, rounded once to out's dtype. Each out element belongs to one program: no atomics.

BGMV (decode, grid (T, n_slices, cdiv(max N_s, BLOCK_N))):
    for j0 in range(0, rank, BLOCK_R):              # read rank*BLOCK_N of B^T, rank of y
        acc += sum(y[t, s, j0:j0+BR, None] * B^T[j0:j0+BR, n0:n0+BN], axis=0)
    out[t, n0:n0+BN] += scaling * acc               # read + write BLOCK_N
SGMV (prefill, grid (segments, cdiv(max_len, BLOCK_M), n_slices * cdiv(max N_s, BLOCK_N))): the same as
a [BLOCK_M, BLOCK_R] x [BLOCK_R, BLOCK_N] tl.dot (y rounded to the model dtype for the tensor cores).
The rank loop's trip count is read from `ranks` at run time, so the grid depends only on the batch shape.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .lora_shrink import BLOCK_M, BLOCK_R, INTERPRETED, R_MAX, gather_rows, lora_dot, slot_groups

BLOCK_N = 64


@triton.jit
def _slice(s, S0, S1, S2):
    return tl.where(s == 0, S0, tl.where(s == 1, S1, S2))


@triton.jit
def _bgmv_expand_kernel(
    # pointers
    out_ptr, y_ptr, pool_ptr, off_ptr, rank_ptr, scale_ptr, slot_ptr,
    # sizes: output column start and width of each slice (up to 3)
    START0, START1, START2, N0, N1, N2,
    # strides (rows of out and y contiguous)
    stride_outm, stride_ym, stride_ys, stride_os, stride_om, stride_rs,
    # meta-parameters
    MOD0: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):
    t = tl.program_id(0)
    s = tl.program_id(1)
    nb = tl.program_id(2)
    slot = tl.load(slot_ptr + t)
    if slot < 0:
        return
    N = _slice(s, N0, N1, N2)
    if nb * BLOCK_N >= N:
        return
    r = tl.load(rank_ptr + slot * stride_rs + MOD0 + s)
    if r == 0:
        return
    n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    y_row = y_ptr + t.to(tl.int64) * stride_ym + s * stride_ys
    off_row = off_ptr + slot * stride_os + (MOD0 + s) * stride_om
    j0 = 0
    while j0 < r:                  # a while: the rank is loaded, and at most R_MAX / BLOCK_R trips
        j = j0 + tl.arange(0, BLOCK_R)
        jm = j < r
        yv = tl.load(y_row + j, mask=jm, other=0.0)
        offs = tl.load(off_row + j, mask=jm, other=0).to(tl.int64)
        b = tl.load(pool_ptr + offs[:, None] + n[None, :], mask=jm[:, None] & nmask[None, :], other=0.0)
        acc += tl.sum(yv[:, None] * b.to(tl.float32), axis=0)
        j0 += BLOCK_R
    scale = tl.load(scale_ptr + slot)
    o_ptrs = out_ptr + t.to(tl.int64) * stride_outm + _slice(s, START0, START1, START2) + n
    o = tl.load(o_ptrs, mask=nmask, other=0.0).to(tl.float32)
    tl.store(o_ptrs, (o + scale * acc).to(out_ptr.dtype.element_ty), mask=nmask)


@triton.jit
def _sgmv_expand_kernel(
    # pointers
    out_ptr, y_ptr, pool_ptr, off_ptr, rank_ptr, scale_ptr, seg_start_ptr, seg_slot_ptr,
    # sizes: output column start and width of each slice (up to 3)
    START0, START1, START2, N0, N1, N2,
    # strides (rows of out and y contiguous)
    stride_outm, stride_ym, stride_ys, stride_os, stride_om, stride_rs,
    # meta-parameters
    MOD0: tl.constexpr, N_BLOCKS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr, DOT_IN_F32: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    g = tl.program_id(0)
    mb = tl.program_id(1)
    s = tl.program_id(2) // N_BLOCKS
    nb = tl.program_id(2) % N_BLOCKS
    slot = tl.load(seg_slot_ptr + g)
    if slot < 0:
        return
    N = _slice(s, N0, N1, N2)
    if nb * BLOCK_N >= N:
        return
    start = tl.load(seg_start_ptr + g)
    end = tl.load(seg_start_ptr + g + 1)
    m0 = start + mb * BLOCK_M
    if m0 >= end:
        return
    r = tl.load(rank_ptr + slot * stride_rs + MOD0 + s)
    if r == 0:
        return
    tok = m0 + tl.arange(0, BLOCK_M)
    tmask = tok < end
    n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    off_row = off_ptr + slot * stride_os + (MOD0 + s) * stride_om
    j0 = 0
    while j0 < r:
        j = j0 + tl.arange(0, BLOCK_R)
        jm = j < r
        yt = tl.load(y_ptr + tok.to(tl.int64)[:, None] * stride_ym + s * stride_ys + j[None, :],
                     mask=tmask[:, None] & jm[None, :], other=0.0)
        offs = tl.load(off_row + j, mask=jm, other=0).to(tl.int64)
        bt = tl.load(pool_ptr + offs[:, None] + n[None, :], mask=jm[:, None] & nmask[None, :], other=0.0)
        acc = lora_dot(yt, bt, acc, pool_ptr, DOT_IN_F32, DOT_PRECISION)
        j0 += BLOCK_R
    scale = tl.load(scale_ptr + slot)
    o_ptrs = (out_ptr + tok.to(tl.int64)[:, None] * stride_outm + _slice(s, START0, START1, START2)
              + n[None, :])
    om = tmask[:, None] & nmask[None, :]
    o = tl.load(o_ptrs, mask=om, other=0.0).to(tl.float32)
    tl.store(o_ptrs, (o + scale * acc).to(out_ptr.dtype.element_ty), mask=om)


def _slice_args(slices: tuple[tuple[int, int], ...]) -> tuple[list[int], list[int], int]:
    assert 1 <= len(slices) <= 3, slices
    starts = [s for s, _ in slices] + [0] * (3 - len(slices))
    sizes = [n for _, n in slices] + [0] * (3 - len(slices))
    return starts, sizes, triton.cdiv(max(sizes), BLOCK_N)


def _check(out, y, pool, b_off, ranks, scaling, n_slices):
    assert out.dim() == 2 and out.stride(1) == 1 and pool.dtype == out.dtype, (out.shape, out.stride())
    assert y.dtype == torch.float32 and y.shape == (out.shape[0], n_slices, R_MAX) and y.is_contiguous()
    assert b_off.dtype == torch.int32 and b_off.shape[2] == R_MAX and ranks.shape == b_off.shape[:2]
    assert scaling.dtype == torch.float32 and scaling.shape[0] == b_off.shape[0]


def bgmv_expand(out: torch.Tensor, y: torch.Tensor, pool: torch.Tensor, b_off: torch.Tensor, ranks: torch.Tensor,
                scaling: torch.Tensor, token_slots: torch.Tensor, mod0: int,
                slices: tuple[tuple[int, int], ...]) -> None:
    """out[t, start_s:start_s+N_s] += scaling[slot] * y[t, s, :r] @ B[slot, mod0 + s][:, :r].T, in place.

    out [T, N_out] model dtype; y float32 [T, n_slices, R_MAX] (lora_shrink's); b_off int32 [S, M, R_MAX]
    offsets of B^T's rows; ranks int32 [S, M]; scaling float32 [S]; token_slots int32 [T] (-1: none);
    slices: (start, width) of each slice's output columns.
    """
    _check(out, y, pool, b_off, ranks, scaling, len(slices))
    starts, sizes, nblocks = _slice_args(slices)
    T = out.shape[0]
    if T:
        _bgmv_expand_kernel[(T, len(slices), nblocks)](
            out, y, pool, b_off, ranks, scaling, token_slots, *starts, *sizes, out.stride(0), y.stride(0),
            y.stride(1), b_off.stride(0), b_off.stride(1), ranks.stride(0), MOD0=mod0, BLOCK_R=BLOCK_R,
            BLOCK_N=BLOCK_N, num_warps=4)


def sgmv_expand(out: torch.Tensor, y: torch.Tensor, pool: torch.Tensor, b_off: torch.Tensor, ranks: torch.Tensor,
                scaling: torch.Tensor, seg_starts: torch.Tensor, seg_slots: torch.Tensor, max_seg_len: int,
                mod0: int, slices: tuple[tuple[int, int], ...]) -> None:
    """bgmv_expand for segments [seg_starts[g], seg_starts[g+1]) of tokens sharing seg_slots[g]."""
    _check(out, y, pool, b_off, ranks, scaling, len(slices))
    starts, sizes, nblocks = _slice_args(slices)
    G = seg_slots.shape[0]
    if out.shape[0] and G:
        grid = (G, triton.cdiv(max_seg_len, BLOCK_M), len(slices) * nblocks)
        _sgmv_expand_kernel[grid](
            out, y, pool, b_off, ranks, scaling, seg_starts, seg_slots, *starts, *sizes, out.stride(0), y.stride(0),
            y.stride(1), b_off.stride(0), b_off.stride(1), ranks.stride(0), MOD0=mod0, N_BLOCKS=nblocks,
            BLOCK_M=BLOCK_M, BLOCK_R=BLOCK_R, BLOCK_N=BLOCK_N, DOT_IN_F32=INTERPRETED,
            DOT_PRECISION="ieee" if out.dtype == torch.float32 else "tf32", num_warps=4)  # no TF32 in float32


def lora_expand_ref(out: torch.Tensor, y: torch.Tensor, pool: torch.Tensor, b_off: torch.Tensor,
                    ranks: torch.Tensor, scaling: torch.Tensor, token_slots: torch.Tensor, mod0: int,
                    slices: tuple[tuple[int, int], ...]) -> None:
    """bgmv_expand / sgmv_expand as a float32 loop over the adapters present (one matmul per adapter, slice)."""
    for slot, idx in slot_groups(token_slots):
        for s, (start, n) in enumerate(slices):
            r = int(ranks[slot, mod0 + s])
            if r:
                delta = y[idx, s, :r] @ gather_rows(pool, b_off[slot, mod0 + s, :r], n) * scaling[slot]
                out[idx, start:start + n] = (out[idx, start:start + n].float() + delta).to(out.dtype)
