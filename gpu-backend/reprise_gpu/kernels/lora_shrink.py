"""LoRA shrink, y = x A^T, for a batch where every token may use another adapter (Punica's SGMV/BGMV).

Punica: Chen et al., "Punica: Multi-Tenant LoRA Serving" (2023); S-LoRA: Sheng et al., "S-LoRA: Serving
Thousands of Concurrent LoRA Adapters" (2023), whose unified paging this reads from.

Adapter weights live in place in one layer's slab of the paged KV pool (`pool`, flat, model dtype): row j
of A for (slot, module m) is `pool[a_off[slot, m, j] : + K]`. A fused projection (qkv: 3 slices, gate_up:
2) shrinks all its slices in one launch; slice s is module `mod0 + s`. `ranks[slot, m]` is the adapter's
rank for m, 0 where it has no LoRA; a token with slot -1 has no adapter. Only rows j < rank are read or
computed (ranks are never padded): a rank-8 adapter costs 1/16 of a rank-128 one.

    y[t, s, j] = sum_k x[t, k] * A[slot(t), mod0 + s][j, k]       for j < ranks[slot(t), mod0 + s]

y is float32 [T, n_slices, R_MAX]; entries past a token's rank (and rows of tokens without an adapter)
are left unwritten: lora_expand reads only what was written.

BGMV (decode, grid (T, n_slices, R_MAX / BLOCK_R)), one token per program:
    rows = rb*BLOCK_R + arange(BLOCK_R); return if rows[0] >= rank
    for k0 in range(0, K, BLOCK_K):                 # read BLOCK_R*K of A, K of x
        acc += sum(A[rows, k0:k0+BK] * x[t, k0:k0+BK], axis=1)
SGMV (prefill, grid (segments, cdiv(max_len, BLOCK_M), n_slices * R_MAX / BLOCK_R)): tokens
[start[g], start[g+1]) share slot[g]; the same loop as a [BLOCK_M, BLOCK_K] x [BLOCK_K, BLOCK_R] tl.dot,
so A is read once per BLOCK_M tokens. Both grids are fixed by the batch shape, never by the adapters:
a CUDA graph replays them with any adapters in any slots.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

R_MAX = 128            # the largest rank served (PEFT ranks 4..128)
BLOCK_R = 16           # rank rows per program: tl.dot's minimum; the last block of a rank is masked
BLOCK_K = 64
BLOCK_M = 32


@triton.jit
def lora_dot(a, b, acc, pool_ptr, DOT_IN_F32: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """acc + a @ b: operands in the pool's (model) dtype for the tensor cores, or both in float32 where
    DOT_IN_F32 (the interpreter, see INTERPRETED below; float32 models)."""
    if DOT_IN_F32:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=DOT_PRECISION)
    else:
        out = tl.dot(a.to(pool_ptr.dtype.element_ty), b.to(pool_ptr.dtype.element_ty), acc,
                     input_precision=DOT_PRECISION)
    return out


@triton.jit
def _bgmv_shrink_kernel(
    # pointers
    x_ptr, pool_ptr, off_ptr, rank_ptr, slot_ptr, y_ptr,
    # strides (rows of x and y contiguous)
    stride_xm, stride_os, stride_om, stride_rs, stride_ym, stride_ys,
    # meta-parameters (K, the input width, too: a constant bound lets the K loop pipeline)
    K: tl.constexpr, MOD0: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    t = tl.program_id(0)
    s = tl.program_id(1)
    rb = tl.program_id(2)
    slot = tl.load(slot_ptr + t)
    if slot < 0:
        return
    r = tl.load(rank_ptr + slot * stride_rs + MOD0 + s)
    if rb * BLOCK_R >= r:
        return
    rows = rb * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < r
    offs = tl.load(off_ptr + slot * stride_os + (MOD0 + s) * stride_om + rows, mask=rmask, other=0).to(tl.int64)
    acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
    x_row = x_ptr + t.to(tl.int64) * stride_xm
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        km = k < K
        xv = tl.load(x_row + k, mask=km, other=0.0).to(tl.float32)
        a = tl.load(pool_ptr + offs[:, None] + k[None, :], mask=rmask[:, None] & km[None, :], other=0.0)
        acc += tl.sum(a.to(tl.float32) * xv[None, :], axis=1)
    tl.store(y_ptr + t.to(tl.int64) * stride_ym + s * stride_ys + rows, acc, mask=rmask)


@triton.jit
def _sgmv_shrink_kernel(
    # pointers
    x_ptr, pool_ptr, off_ptr, rank_ptr, seg_start_ptr, seg_slot_ptr, y_ptr,
    # strides (rows of x and y contiguous)
    stride_xm, stride_os, stride_om, stride_rs, stride_ym, stride_ys,
    # meta-parameters
    K: tl.constexpr, MOD0: tl.constexpr, R_BLOCKS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr, DOT_IN_F32: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    g = tl.program_id(0)
    mb = tl.program_id(1)
    s = tl.program_id(2) // R_BLOCKS
    rb = tl.program_id(2) % R_BLOCKS
    slot = tl.load(seg_slot_ptr + g)
    if slot < 0:
        return
    start = tl.load(seg_start_ptr + g)
    end = tl.load(seg_start_ptr + g + 1)
    m0 = start + mb * BLOCK_M
    if m0 >= end:
        return
    r = tl.load(rank_ptr + slot * stride_rs + MOD0 + s)
    if rb * BLOCK_R >= r:
        return
    tok = m0 + tl.arange(0, BLOCK_M)
    tmask = tok < end
    rows = rb * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < r
    offs = tl.load(off_ptr + slot * stride_os + (MOD0 + s) * stride_om + rows, mask=rmask, other=0).to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        km = k < K
        xt = tl.load(x_ptr + tok.to(tl.int64)[:, None] * stride_xm + k[None, :], mask=tmask[:, None] & km[None, :],
                     other=0.0)
        at = tl.load(pool_ptr + offs[None, :] + k[:, None], mask=km[:, None] & rmask[None, :], other=0.0)  # A^T tile
        acc = lora_dot(xt, at, acc, pool_ptr, DOT_IN_F32, DOT_PRECISION)
    tl.store(y_ptr + tok.to(tl.int64)[:, None] * stride_ym + s * stride_ys + rows[None, :], acc,
             mask=tmask[:, None] & rmask[None, :])


# Triton 3.6's interpreter (TRITON_INTERPRET=1) multiplies bfloat16 tl.dot operands as integer bit patterns:
# there they are upcast (exactly) to float32 first. (It also cannot bound a range() by a loaded scalar,
# hence the while loops over ranks in lora_expand.py.)
INTERPRETED = not isinstance(_sgmv_shrink_kernel, triton.runtime.JITFunction)


def _check(x, pool, a_off, ranks):
    assert x.dim() == 2 and x.stride(1) == 1 and pool.dim() == 1 and pool.dtype == x.dtype, (x.shape, pool.shape)
    assert a_off.dim() == 3 and a_off.shape[2] == R_MAX and a_off.dtype == torch.int32 and a_off.is_contiguous()
    assert ranks.shape == a_off.shape[:2] and ranks.dtype == torch.int32 and ranks.is_contiguous()


def bgmv_shrink(x: torch.Tensor, pool: torch.Tensor, a_off: torch.Tensor, ranks: torch.Tensor,
                token_slots: torch.Tensor, mod0: int, n_slices: int) -> torch.Tensor:
    """y[t, s, :r] = x[t] @ A[token_slots[t], mod0 + s][:r].T (one token per program).

    x [T, K] model dtype; pool [P] model dtype; a_off int32 [S, M, R_MAX] element offsets of A's rows;
    ranks int32 [S, M]; token_slots int32 [T] (-1: no adapter) -> y float32 [T, n_slices, R_MAX].
    """
    _check(x, pool, a_off, ranks)
    T, K = x.shape
    y = torch.empty(T, n_slices, R_MAX, dtype=torch.float32, device=x.device)
    if T:
        _bgmv_shrink_kernel[(T, n_slices, R_MAX // BLOCK_R)](
            x, pool, a_off, ranks, token_slots, y, x.stride(0), a_off.stride(0), a_off.stride(1),
            ranks.stride(0), y.stride(0), y.stride(1), K=K, MOD0=mod0, BLOCK_R=BLOCK_R, BLOCK_K=BLOCK_K, num_warps=4)
    return y


def sgmv_shrink(x: torch.Tensor, pool: torch.Tensor, a_off: torch.Tensor, ranks: torch.Tensor,
                seg_starts: torch.Tensor, seg_slots: torch.Tensor, max_seg_len: int, mod0: int,
                n_slices: int) -> torch.Tensor:
    """y[s[g]:s[g+1], i, :r] = x[s[g]:s[g+1]] @ A[seg_slots[g], mod0 + i][:r].T (segments share an adapter).

    seg_starts int32 [G+1] (token offsets, last = T), seg_slots int32 [G]; the rest as bgmv_shrink.
    """
    _check(x, pool, a_off, ranks)
    T, K = x.shape
    y = torch.empty(T, n_slices, R_MAX, dtype=torch.float32, device=x.device)
    G = seg_slots.shape[0]
    if T and G:
        grid = (G, triton.cdiv(max_seg_len, BLOCK_M), n_slices * (R_MAX // BLOCK_R))
        _sgmv_shrink_kernel[grid](
            x, pool, a_off, ranks, seg_starts, seg_slots, y, x.stride(0), a_off.stride(0), a_off.stride(1),
            ranks.stride(0), y.stride(0), y.stride(1), K=K, MOD0=mod0, R_BLOCKS=R_MAX // BLOCK_R, BLOCK_M=BLOCK_M,
            BLOCK_R=BLOCK_R, BLOCK_K=BLOCK_K, DOT_IN_F32=INTERPRETED,
            DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32", num_warps=4)  # no TF32 in float32
    return y


def gather_rows(pool: torch.Tensor, offsets: torch.Tensor, length: int) -> torch.Tensor:
    """pool[offsets[j] : offsets[j] + length] for each j -> [len(offsets), length] (float32)."""
    idx = offsets.long()[:, None] + torch.arange(length, device=pool.device)[None, :]
    return pool[idx].float()


def slot_groups(token_slots: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """[(slot, token indices)] for each adapter slot present (-1 left out): the references' loop."""
    slots = token_slots.long()
    return [(int(s), (slots == s).nonzero().flatten()) for s in torch.unique(slots).tolist() if s >= 0]


def lora_shrink_ref(x: torch.Tensor, pool: torch.Tensor, a_off: torch.Tensor, ranks: torch.Tensor,
                    token_slots: torch.Tensor, mod0: int, n_slices: int) -> torch.Tensor:
    """bgmv_shrink (and sgmv_shrink, given the per-token slots) as a float32 loop over the adapters
    present: gather A's rows, one matmul per adapter and slice. Unwritten entries are 0."""
    T, K = x.shape
    y = torch.zeros(T, n_slices, R_MAX, dtype=torch.float32, device=x.device)
    for slot, idx in slot_groups(token_slots):
        for s in range(n_slices):
            r = int(ranks[slot, mod0 + s])
            if r:
                y[idx, s, :r] = x[idx].float() @ gather_rows(pool, a_off[slot, mod0 + s, :r], K).T
    return y
