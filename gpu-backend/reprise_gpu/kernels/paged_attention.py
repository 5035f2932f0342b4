"""Paged attention: decode and chunked prefill over a block-table KV cache, in one Triton kernel.

Sequence b of a flat batch has n_b new queries q[s_b : s_b + n_b] (s = cu_seqlens_q) and, after this
step's K/V store, ctx_b = context_lens[b] tokens in the cache: p_b = ctx_b - n_b past tokens, then the
n_b new ones. With G = n_heads / n_kv_heads (GQA) and K_b[j] = k_cache[block_tables[b, j // BS], j % BS]:

    out[s_b + i, h] = softmax_j(scale * q[s_b + i, h] . K_b[j, h // G], j <= p_b + i) @ V_b[:, h // G]

Decode is n_b = 1; chunked prefill is n_b > 1 queries attending to the cached past and causally to
themselves. With window W > 0 a query at position p sees only keys j > p - W (the speculator's cheaper
predictors; the model itself never sets it). One kernel handles any mix. Online softmax as in FlashAttention-2 (Dao, 2023); pages as in
PagedAttention (Kwon et al., SOSP 2023).

Blocked algorithm, one program per (sequence b, kv head kh, tile of BLOCK_Q new tokens):

    rows = the BLOCK_Q tokens x the G query heads of kv head kh      # BLOCK_M = BLOCK_Q * pow2(G) rows
    Q = q[rows]                                                       # [BLOCK_M, D], read once
    m, l, acc = -inf, 0, 0
    for n0 in range(0, min(ctx_b, p_b + last token of the tile + 1), BLOCK_N):
        j = n0 + arange(BLOCK_N)
        slot = block_tables[b, j // BS] * BS + j % BS                 # gather through the page table
        K, V = k_cache[slot, kh], v_cache[slot, kh]                    # [BLOCK_N, D] each
        S = Q @ K^T * scale * log2(e);  S[j > pos(row)] = -inf          # causal, pos(row) = p_b + token
        m_new = max(m, rowmax(S));  P = exp2(S - m_new);  a = exp2(m - m_new)
        acc = acc * a + P @ V;  l = l * a + rowsum(P);  m = m_new
    out[rows] = acc / l

Grouping the G query heads of one kv head into the rows of a tile reads each K/V page once per
(sequence, kv head) in decode: bytes moved ~ sum_b ctx_b * KH * D * 2 (K and V) * itemsize.
BLOCK_N and BLOCK_D are fixed (never chosen from the batch), so one query row's reduction order does
not depend on what else is in the batch; tiles past a row's causal limit are fully masked and leave
its acc/l/m bit-for-bit unchanged. There is no split-K: few sequences with long contexts leave the
GPU under-occupied (a fixed-size partitioned variant is future work).

CUDA-graph capture: the grid depends only on B, KH and max_seqlen_q (host ints, 1 for decode); the
loop bounds are read on the device; nothing syncs with the host.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

BLOCK_N = 64  # keys per inner step; fixed for batch invariance (see above)
NUM_WARPS = 4
NUM_STAGES = 3  # the page-index load runs a stage ahead of the K/V gathers (cp.async on sm_90)


@triton.jit
def _attend_keys(q, q_pos, m_i, l_i, acc, n0, kv_end, bt_row, k_cache_ptr, v_cache_ptr, kh,
                 stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, scale_log2,
                 offs_d, d_ok, window, PAGE: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
                 DOT_IN_F32: tl.constexpr):
    """One online-softmax step over keys [n0, n0 + BLOCK_N) of one sequence and kv head."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    n_ok = offs_n < kv_end
    page = tl.load(bt_row + offs_n // PAGE, mask=n_ok, other=0).to(tl.int64)
    in_page = offs_n % PAGE
    kv_mask = n_ok[:, None] & d_ok[None, :]
    k_off = page * stride_kb + in_page * stride_ks + kh * stride_kh
    k = tl.load(k_cache_ptr + k_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)  # read N x D
    if DOT_IN_F32:
        k = k.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
    causal = (offs_n[None, :] <= q_pos[:, None]) & n_ok[None, :]
    causal = causal & ((window <= 0) | (offs_n[None, :] > q_pos[:, None] - window))
    s = tl.where(causal, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # padding rows: keep exp2 finite
    p = tl.math.exp2(s - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    v_off = page * stride_vb + in_page * stride_vs + kh * stride_vh
    v = tl.load(v_cache_ptr + v_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)  # read N x D
    p = p.to(v.dtype)  # P @ V runs in the cache dtype, as FlashAttention does
    if DOT_IN_F32:
        p = p.to(tl.float32)
        v = v.to(tl.float32)
    acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=DOT_PRECISION)
    return m_new, l_i, acc


@triton.jit
def _paged_attention_kernel(
    # pointers
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr,
    cu_seqlens_q_ptr, context_lens_ptr, block_tables_ptr,
    # sizes
    scale_log2,  # softmax scale * log2(e): exp2 instead of exp
    window,      # 0: full causal; W > 0: keys j > pos - W only
    # strides (last dim of q, caches and out is contiguous)
    stride_qt, stride_qh,
    stride_kb, stride_ks, stride_kh,  # k_cache [num_blocks, block_size, KH, D]
    stride_vb, stride_vs, stride_vh,
    stride_ot, stride_oh,
    stride_bt,                        # block_tables [B, max_blocks]
    # meta-parameters
    GROUP: tl.constexpr, GROUP_P2: tl.constexpr,     # query heads per kv head, and its next power of 2
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    PAGE: tl.constexpr,                               # block_size of the cache
    BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,                      # "ieee" for float32 (no TF32), "tf32" otherwise
    WHILE_LOOP: tl.constexpr,                         # True under TRITON_INTERPRET (see below)
    DOT_IN_F32: tl.constexpr,                         # True under TRITON_INTERPRET for bfloat16 (see below)
):
    b = tl.program_id(0)
    kh = tl.program_id(1)
    mb = tl.program_id(2)
    q_start = tl.load(cu_seqlens_q_ptr + b)
    q_len = tl.load(cu_seqlens_q_ptr + b + 1) - q_start
    if mb * BLOCK_Q < q_len:
        ctx = tl.load(context_lens_ptr + b)
        past = ctx - q_len
        BLOCK_M: tl.constexpr = BLOCK_Q * GROUP_P2
        offs_m = tl.arange(0, BLOCK_M)
        tok = mb * BLOCK_Q + offs_m // GROUP_P2
        hg = offs_m % GROUP_P2
        row_ok = (tok < q_len) & (hg < GROUP)
        head = kh * GROUP + hg
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < HEAD_DIM

        q_off = (q_start + tok).to(tl.int64)[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :]
        q = tl.load(q_ptr + q_off, mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # read BLOCK_M x D once
        if DOT_IN_F32:
            q = q.to(tl.float32)
        q_pos = past + tok
        kv_end = tl.minimum(ctx, past + tl.minimum((mb + 1) * BLOCK_Q, q_len))

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        bt_row = block_tables_ptr + b.to(tl.int64) * stride_bt
        # a window skips whole key tiles before the tile's first row can see; rows that see none of a tile
        # leave m/l/acc bit-for-bit unchanged, so a row's result does not depend on its tile-mates
        n_first = tl.where(window > 0, tl.maximum(past + mb * BLOCK_Q - window + 1, 0) // BLOCK_N * BLOCK_N, 0)
        if WHILE_LOOP:  # the interpreter cannot use a loaded scalar as a range() bound
            n0 = n_first
            while n0 < kv_end:
                m_i, l_i, acc = _attend_keys(
                    q, q_pos, m_i, l_i, acc, n0, kv_end, bt_row, k_cache_ptr, v_cache_ptr, kh,
                    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, scale_log2,
                    offs_d, d_ok, window, PAGE, BLOCK_N, DOT_PRECISION, DOT_IN_F32)
                n0 += BLOCK_N
        else:
            for n0 in range(n_first, kv_end, BLOCK_N):
                m_i, l_i, acc = _attend_keys(
                    q, q_pos, m_i, l_i, acc, n0, kv_end, bt_row, k_cache_ptr, v_cache_ptr, kh,
                    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, scale_log2,
                    offs_d, d_ok, window, PAGE, BLOCK_N, DOT_PRECISION, DOT_IN_F32)
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        o_off = (q_start + tok).to(tl.int64)[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :]
        tl.store(out_ptr + o_off, out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


# Two interpreter-only switches (triton 3.6, TRITON_INTERPRET=1): a scalar loaded from memory cannot
# bound a range() (it is a 1-element array), and tl.dot multiplies bfloat16 bit patterns as integers.
# So the interpreter runs a `while` loop (a `for` is software-pipelined on the GPU, a `while` is not)
# and upcasts bfloat16 dot operands exactly to float32 (the GPU multiplies them exactly too).
_INTERPRETED = not isinstance(_paged_attention_kernel, triton.runtime.JITFunction)


def _tiles(group: int, max_seqlen_q: int) -> tuple[int, int]:
    """(BLOCK_Q, pow2(G)): 16 rows for decode (tl.dot's minimum), 64 for prefill."""
    group_p2 = triton.next_power_of_2(group)
    rows = 16 if max_seqlen_q == 1 else 64
    return max(1, rows // group_p2), group_p2


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    cu_seqlens_q: torch.Tensor, context_lens: torch.Tensor, block_tables: torch.Tensor,
                    max_seqlen_q: int, scale: float | None = None, out: torch.Tensor | None = None,
                    window: int = 0) -> torch.Tensor:
    """out[s_b+i, h] = softmax(scale * q[s_b+i, h] . K_b[:p_b+i+1, h//G]) @ V_b[:p_b+i+1, h//G] for each sequence b
    (with window W > 0: keys (p_b + i - W, p_b + i] only).

    q: [T, H, D]; k_cache, v_cache: [num_blocks, block_size, KH, D], q's dtype, last dim contiguous;
    cu_seqlens_q: [B+1] int32; context_lens: [B] int32 (past + new, K/V of the new tokens already stored);
    block_tables: [B, max_blocks] int32; max_seqlen_q: host int >= every n_b; scale: default D**-0.5.
    Returns out (or a new tensor): [T, H, D], q's dtype.
    """
    T, H, D = q.shape
    num_blocks, block_size, KH, Dk = k_cache.shape
    B = context_lens.shape[0]
    assert Dk == D and v_cache.shape == k_cache.shape and H % KH == 0, (q.shape, k_cache.shape, v_cache.shape)
    assert q.dtype == k_cache.dtype == v_cache.dtype, (q.dtype, k_cache.dtype, v_cache.dtype)
    assert q.stride(2) == 1 and k_cache.stride(3) == 1 and v_cache.stride(3) == 1
    assert cu_seqlens_q.shape == (B + 1,) and cu_seqlens_q.dtype == torch.int32
    assert context_lens.dtype == torch.int32 and block_tables.dtype == torch.int32
    assert block_tables.dim() == 2 and block_tables.shape[0] == B and block_tables.stride(1) == 1
    assert max_seqlen_q >= 1
    if out is None:
        out = torch.empty_like(q)
    assert out.shape == q.shape and out.dtype == q.dtype and out.stride(2) == 1
    if scale is None:
        scale = D ** -0.5
    group = H // KH
    block_q, group_p2 = _tiles(group, max_seqlen_q)
    grid = (B, KH, triton.cdiv(max_seqlen_q, block_q))
    assert grid[1] <= 65535 and grid[2] <= 65535, f"grid {grid}: CUDA caps grid dims 1 and 2 at 65535"
    _paged_attention_kernel[grid](
        q, k_cache, v_cache, out, cu_seqlens_q, context_lens, block_tables,
        scale * 1.4426950408889634,  # 1/ln(2)
        int(window),
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        out.stride(0), out.stride(1),
        block_tables.stride(0),
        GROUP=group, GROUP_P2=group_p2, HEAD_DIM=D, BLOCK_D=max(16, triton.next_power_of_2(D)),
        PAGE=block_size, BLOCK_Q=block_q, BLOCK_N=BLOCK_N,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        WHILE_LOOP=_INTERPRETED, DOT_IN_F32=_INTERPRETED and q.dtype == torch.bfloat16,
        num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )
    return out


def paged_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        cu_seqlens_q: torch.Tensor, context_lens: torch.Tensor, block_tables: torch.Tensor,
                        max_seqlen_q: int | None = None, scale: float | None = None,
                        out: torch.Tensor | None = None, window: int = 0) -> torch.Tensor:
    """Same semantics and arguments as `paged_attention`: plain float32 PyTorch, one sequence at a time."""
    T, H, D = q.shape
    _, block_size, KH, _ = k_cache.shape
    group = H // KH
    scale = D ** -0.5 if scale is None else scale
    cu = cu_seqlens_q.tolist()
    ctxs = context_lens.tolist()
    res = torch.zeros(T, H, D, dtype=torch.float32, device=q.device)
    for b, ctx in enumerate(ctxs):
        start, end = cu[b], cu[b + 1]
        n = end - start
        if n == 0:
            continue
        pages = block_tables[b, :math.ceil(ctx / block_size)].long()
        k = k_cache[pages].reshape(-1, KH, D)[:ctx].float().repeat_interleave(group, dim=1)  # [ctx, H, D]
        v = v_cache[pages].reshape(-1, KH, D)[:ctx].float().repeat_interleave(group, dim=1)
        s = torch.einsum("qhd,khd->hqk", q[start:end].float(), k) * scale
        q_pos = torch.arange(ctx - n, ctx, device=q.device)
        visible = torch.arange(ctx, device=q.device)[None, :] <= q_pos[:, None]
        if window > 0:
            visible &= torch.arange(ctx, device=q.device)[None, :] > q_pos[:, None] - window
        s = s.masked_fill(~visible, float("-inf"))
        res[start:end] = torch.einsum("hqk,khd->qhd", torch.softmax(s, dim=-1), v)
    if out is None:
        return res.to(q.dtype)
    out.copy_(res)
    return out
