"""RoPE on q and k (in place) fused with the paged K/V store, in one kernel.

RoPE (Su et al., RoFormer 2021) in HF's rotate_half layout: channel i of a head pairs with i + D/2.
For each token t with cos[t], sin[t] ([D/2], float32, already gathered at t's position):

    q[t, h] = (q1 * cos - q2 * sin, q2 * cos + q1 * sin)      # q1, q2 = halves of q[t, h], math in float32,
    k[t, h] = (k1 * cos - k2 * sin, k2 * cos + k1 * sin)      #   rounded to the input dtype
    k_cache[slot // BS, slot % BS] = k[t];  v_cache[...] = v[t]  # slot = slot_mapping[t]

q and k are rotated where they lie (usually views into the fused qkv projection's output), so after the
call k holds exactly what the cache stores: a forward hook on the module that calls this sees it.

Blocked algorithm, one program per token (all heads at once; D/2 lanes per head):

    c, s = load(cos[t]), load(sin[t])                          # read D floats
    for x, heads in (q, H), (k, KH):
        x1, x2 = load(x[t, :, :D/2]), load(x[t, :, D/2:])     # read heads * D
        store(x[t], rotate(x1, x2, c, s))                      # write heads * D
    slot = slot_mapping[t]
    store(k_cache[slot], rotated k);  store(v_cache[slot], load(v[t]))  # read KH*D, write 2*KH*D

Memory-bound and tiny at decode (B * (H + 3 KH) * D * itemsize * 2 bytes); the point is one launch
instead of ~20 (float, chunk products, cat, cast for q and for k, plus two index_copy_). Padding rows of a
captured batch must point at a scratch slot (e.g. block 0): a negative slot is not skipped.
No host sync, grid (T,): CUDA-graph capturable.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .kv_store import store_kv


@triton.jit
def _rotate(x_ptr, row_off, offs_h, h_ok, stride_h, offs_d, d_ok, c, s, HALF: tl.constexpr):
    """Rotate x[row, heads, :] in place; returns the two rotated halves in x's dtype."""
    p = x_ptr + row_off + offs_h[:, None] * stride_h + offs_d[None, :]
    m = h_ok[:, None] & d_ok[None, :]
    x1 = tl.load(p, mask=m, other=0.0)
    x2 = tl.load(p + HALF, mask=m, other=0.0)
    x1f, x2f = x1.to(tl.float32), x2.to(tl.float32)
    o1 = (x1f * c[None, :] - x2f * s[None, :]).to(x1.dtype)
    o2 = (x2f * c[None, :] + x1f * s[None, :]).to(x1.dtype)
    tl.store(p, o1, mask=m)
    tl.store(p + HALF, o2, mask=m)
    return o1, o2


@triton.jit
def _rope_store_kv_kernel(
    # pointers
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    # strides (the last dim of every tensor is contiguous)
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_ct, stride_st,
    stride_kcb, stride_kcs, stride_kch,  # k_cache [num_blocks, block_size, KH, D]
    stride_vcb, stride_vcs, stride_vch,
    # meta-parameters
    H: tl.constexpr, KH: tl.constexpr, HALF: tl.constexpr,  # HALF = head_dim / 2
    PAGE: tl.constexpr,                                      # block_size of the cache
    BLOCK_H: tl.constexpr, BLOCK_KH: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_HALF)
    d_ok = offs_d < HALF
    c = tl.load(cos_ptr + t * stride_ct + offs_d, mask=d_ok, other=0.0)
    s = tl.load(sin_ptr + t * stride_st + offs_d, mask=d_ok, other=0.0)

    offs_h = tl.arange(0, BLOCK_H)
    _rotate(q_ptr, t * stride_qt, offs_h, offs_h < H, stride_qh, offs_d, d_ok, c, s, HALF)

    offs_kh = tl.arange(0, BLOCK_KH)
    kh_ok = offs_kh < KH
    k1, k2 = _rotate(k_ptr, t * stride_kt, offs_kh, kh_ok, stride_kh, offs_d, d_ok, c, s, HALF)

    slot = tl.load(slot_ptr + t)
    page, in_page = slot // PAGE, slot % PAGE
    m = kh_ok[:, None] & d_ok[None, :]
    kc = k_cache_ptr + page * stride_kcb + in_page * stride_kcs + offs_kh[:, None] * stride_kch + offs_d[None, :]
    tl.store(kc, k1, mask=m)
    tl.store(kc + HALF, k2, mask=m)
    vp = v_ptr + t * stride_vt + offs_kh[:, None] * stride_vh + offs_d[None, :]
    vc = v_cache_ptr + page * stride_vcb + in_page * stride_vcs + offs_kh[:, None] * stride_vch + offs_d[None, :]
    tl.store(vc, tl.load(vp, mask=m, other=0.0), mask=m)
    tl.store(vc + HALF, tl.load(vp + HALF, mask=m, other=0.0), mask=m)


def _check(q, k, v, cos, sin, k_cache, v_cache, slot_mapping):
    T, H, D = q.shape
    KH = k.shape[1]
    assert k.shape == v.shape == (T, KH, D) and H % KH == 0 and D % 2 == 0, (q.shape, k.shape, v.shape)
    assert q.dtype == k.dtype == v.dtype == k_cache.dtype == v_cache.dtype, (q.dtype, k.dtype, k_cache.dtype)
    assert k_cache.shape[2:] == (KH, D) and v_cache.shape == k_cache.shape, (k_cache.shape, v_cache.shape)
    assert slot_mapping.shape == (T,) and slot_mapping.dtype == torch.int64
    cos, sin = cos.reshape(T, D // 2), sin.reshape(T, D // 2)
    assert cos.dtype == sin.dtype == torch.float32, (cos.dtype, sin.dtype)
    return cos, sin


def rope_store_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """q, k = rope(q), rope(k) in place; k_cache/v_cache at slot_mapping[t] = k[t], v[t].

    q: [T, H, D], k, v: [T, KH, D], one dtype, any strides with the last dim contiguous (views of qkv);
    cos, sin: [T, D/2] or [T, 1, D/2] float32; k_cache, v_cache: [num_blocks, block_size, KH, D], q's dtype,
    last dim contiguous; slot_mapping: [T] int64, slot = block * block_size + offset, unique.
    """
    cos, sin = _check(q, k, v, cos, sin, k_cache, v_cache, slot_mapping)
    T, H, D = q.shape
    KH = k.shape[1]
    for x in (q, k, v, cos, sin, k_cache, v_cache):
        assert x.stride(-1) == 1, x.stride()
    if T == 0:
        return
    block_h, block_half = triton.next_power_of_2(H), triton.next_power_of_2(D // 2)
    _rope_store_kv_kernel[(T,)](
        q, k, v, cos, sin, k_cache, v_cache, slot_mapping,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        cos.stride(0), sin.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        H=H, KH=KH, HALF=D // 2, PAGE=k_cache.shape[1],
        BLOCK_H=block_h, BLOCK_KH=triton.next_power_of_2(KH), BLOCK_HALF=block_half,
        num_warps=4 if block_h * block_half >= 2048 else 2 if block_h * block_half >= 512 else 1,
    )


def apply_rope_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """x [T, heads, D] rotated in place; cos, sin [T, D/2] float32; math in float32, rounded once."""
    x1, x2 = x.float().chunk(2, dim=-1)
    c, s = cos[:, None, :], sin[:, None, :]
    o1, o2 = x1 * c - x2 * s, x2 * c + x1 * s  # both before writing: for float32, x1 and x2 are views of x
    half = x.shape[-1] // 2
    x[..., :half].copy_(o1)
    x[..., half:].copy_(o2)


def rope_store_kv_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Same as `rope_store_kv`, in PyTorch (float32 math; the store through `index_copy_`, graph-capturable)."""
    cos, sin = _check(q, k, v, cos, sin, k_cache, v_cache, slot_mapping)
    apply_rope_(q, cos, sin)
    apply_rope_(k, cos, sin)
    store_kv(k, v, k_cache, v_cache, slot_mapping)
