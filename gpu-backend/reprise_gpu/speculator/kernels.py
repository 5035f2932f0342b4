"""Fused activation quantization for the FP8 speculator: one pass over each row, no eager amax/divide/cast.

    norm_quant(h, g, eps, split)  n = bf16(g * bf16(h / rms(h))); (codes, scale) = e4m3 rows of n;
                                  with split also (dcodes, dscale) = e4m3 rows of n - scale * codes
    silu_mul_quant(gu, F)         a = silu(gu[:, :F]) * gu[:, F:]; (codes, scale) = e4m3 rows of a
    quant_rows(x)                 (codes, scale) = e4m3 rows of x
    rope(x, cos_sin)              RoPE of [T, H, D] in one pass (elementwise; one program per token)
e4m3 rows: scale = amax(row) / 448 (1 for an all-zero row), codes = e4m3(row / scale), round to nearest
even, saturating. Outputs feed `torch._scaled_mm` with rowwise scales (scale_a = scale[:, None]).

Blocked algorithm, one program per row (so a row's bits never depend on how many rows are launched):

    for c in range(0, N, BLOCK): ss += x[c:c+BLOCK]^2             # norm_quant only; BLOCK fixed
    rms = sqrt(sum(ss) / N + eps)
    for c in ...: amax = max(amax, |f(x[c:c+BLOCK])|)             # f = the row's elementwise function
    scale = amax / 448
    for c in ...: codes[c:c+BLOCK] = e4m3(f(x) / scale)           # recompute f rather than store it
Memory: reads the row 2-3 times (from L2 for rows up to a few hundred KB), writes 1 byte per element.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
BLOCK = 1024          # columns per inner step; fixed so the reduction order never depends on the launch
NUM_WARPS = 4


@triton.jit
def _row_scale(amax):
    """Row scale from the per-lane running maxima: amax(row) / 448, or 1 for an all-zero row."""
    scale = tl.max(amax, axis=0) / 448.0
    return tl.where(scale > 0, scale, 1.0)


@triton.jit
def _e4m3(x, scale):
    """x / scale rounded to e4m3 (nearest even), saturating at +-448."""
    return tl.clamp(x / scale, -448.0, 448.0).to(tl.float8e4nv)


@triton.jit
def _norm_row(x, g, rms):
    n = (x / rms).to(tl.bfloat16).to(tl.float32) * g
    return n.to(tl.bfloat16).to(tl.float32)


@triton.jit
def _norm_quant_kernel(
    # pointers
    h_ptr, g_ptr, codes_ptr, scale_ptr, rms_ptr, dcodes_ptr, dscale_ptr,
    # sizes and strides
    N, stride_h, stride_c, stride_d, eps,
    # meta-parameters
    SPLIT: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ss = tl.zeros([BLOCK], tl.float32)
    c = tl.program_id(0) * 0      # an int32 tensor: a loop-carried value must not start as a constexpr
    while c < N:  # a while loop: the interpreter cannot range() over a runtime bound
        x = tl.load(h_ptr + row * stride_h + c + cols, mask=c + cols < N, other=0.0)
        ss += x * x
        c += BLOCK
    rms = tl.sqrt(tl.sum(ss, axis=0) / N + eps)
    amax = tl.zeros([BLOCK], tl.float32)
    c = tl.program_id(0) * 0      # an int32 tensor: a loop-carried value must not start as a constexpr
    while c < N:   # a while loop: the interpreter cannot range() over a runtime bound
        m = c + cols < N
        n = _norm_row(tl.load(h_ptr + row * stride_h + c + cols, mask=m, other=0.0),
                      tl.load(g_ptr + c + cols, mask=m, other=0.0), rms)
        amax = tl.maximum(amax, tl.abs(n))
        c += BLOCK
    scale = _row_scale(amax)
    damax = tl.zeros([BLOCK], tl.float32)
    c = tl.program_id(0) * 0      # an int32 tensor: a loop-carried value must not start as a constexpr
    while c < N:   # a while loop: the interpreter cannot range() over a runtime bound
        m = c + cols < N
        n = _norm_row(tl.load(h_ptr + row * stride_h + c + cols, mask=m, other=0.0),
                      tl.load(g_ptr + c + cols, mask=m, other=0.0), rms)
        q = _e4m3(n, scale)
        tl.store(codes_ptr + row * stride_c + c + cols, q, mask=m)
        if SPLIT:
            damax = tl.maximum(damax, tl.abs(n - scale * q.to(tl.float32)))
        c += BLOCK
    tl.store(scale_ptr + row, scale)
    tl.store(rms_ptr + row, rms)
    if SPLIT:
        dscale = _row_scale(damax)
        c = tl.program_id(0) * 0      # an int32 tensor: a loop-carried value must not start as a constexpr
        while c < N:   # a while loop: the interpreter cannot range() over a runtime bound
            m = c + cols < N
            n = _norm_row(tl.load(h_ptr + row * stride_h + c + cols, mask=m, other=0.0),
                          tl.load(g_ptr + c + cols, mask=m, other=0.0), rms)
            q = _e4m3(n, scale)
            d = n - scale * q.to(tl.float32)
            tl.store(dcodes_ptr + row * stride_d + c + cols, _e4m3(d, dscale), mask=m)
            c += BLOCK
        tl.store(dscale_ptr + row, dscale)


@triton.jit
def _silu_mul(gu_ptr, row, stride_gu, c, cols, F):
    m = c + cols < F
    g = tl.load(gu_ptr + row * stride_gu + c + cols, mask=m, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + row * stride_gu + F + c + cols, mask=m, other=0.0).to(tl.float32)
    return g / (1.0 + tl.exp(-g)) * u


@triton.jit
def _silu_mul_quant_kernel(gu_ptr, codes_ptr, scale_ptr, F, stride_gu, stride_c, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    amax = tl.zeros([BLOCK], tl.float32)
    c = tl.program_id(0) * 0      # an int32 tensor: a loop-carried value must not start as a constexpr
    while c < F:   # a while loop: the interpreter cannot range() over a runtime bound
        amax = tl.maximum(amax, tl.abs(_silu_mul(gu_ptr, row, stride_gu, c, cols, F)))
        c += BLOCK
    scale = _row_scale(amax)
    c = tl.program_id(0) * 0      # an int32 tensor: a loop-carried value must not start as a constexpr
    while c < F:   # a while loop: the interpreter cannot range() over a runtime bound
        a = _silu_mul(gu_ptr, row, stride_gu, c, cols, F)
        tl.store(codes_ptr + row * stride_c + c + cols, _e4m3(a, scale), mask=c + cols < F)
        c += BLOCK
    tl.store(scale_ptr + row, scale)


@triton.jit
def _quant_rows_kernel(x_ptr, codes_ptr, scale_ptr, N, stride_x, stride_c, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    amax = tl.zeros([BLOCK], tl.float32)
    c = tl.program_id(0) * 0      # an int32 tensor: a loop-carried value must not start as a constexpr
    while c < N:   # a while loop: the interpreter cannot range() over a runtime bound
        x = tl.load(x_ptr + row * stride_x + c + cols, mask=c + cols < N, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
        c += BLOCK
    scale = _row_scale(amax)
    c = tl.program_id(0) * 0      # an int32 tensor: a loop-carried value must not start as a constexpr
    while c < N:   # a while loop: the interpreter cannot range() over a runtime bound
        m = c + cols < N
        x = tl.load(x_ptr + row * stride_x + c + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(codes_ptr + row * stride_c + c + cols, _e4m3(x, scale), mask=m)
        c += BLOCK
    tl.store(scale_ptr + row, scale)


@triton.jit
def _rope_kernel(x_ptr, cs_ptr, out_ptr, H, stride_xt, stride_xh, stride_ot, stride_oh, stride_cs,
                 HALF: tl.constexpr, BLOCK_H: tl.constexpr, INVERSE: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    d = tl.arange(0, HALF)
    m = (h < H)[:, None]
    cos = tl.load(cs_ptr + t * stride_cs + d)[None, :]
    sin = tl.load(cs_ptr + t * stride_cs + HALF + d)[None, :]
    base = x_ptr + t * stride_xt + h[:, None] * stride_xh + d[None, :]
    x1 = tl.load(base, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(base + HALF, mask=m, other=0.0).to(tl.float32)
    if INVERSE:
        y1 = x1 * cos + x2 * sin
        y2 = x2 * cos - x1 * sin
    else:
        y1 = x1 * cos - x2 * sin
        y2 = x2 * cos + x1 * sin
    ob = out_ptr + t * stride_ot + h[:, None] * stride_oh + d[None, :]
    tl.store(ob, y1.to(out_ptr.dtype.element_ty), mask=m)
    tl.store(ob + HALF, y2.to(out_ptr.dtype.element_ty), mask=m)


def rope(x: torch.Tensor, cos_sin: torch.Tensor, out_dtype: torch.dtype = torch.float32, inverse: bool = False):
    """x [T, H, D] (HF rotate_half layout), cos_sin [T, D] float32 (cos then sin) -> rotated [T, H, D] out_dtype.

    Note: products and sums may be contracted to FMAs by the compiler; still one fixed instruction sequence
    per element, so a row's bits do not depend on the batch (it is not bit-equal to cpu_ops.rope)."""
    T, H, D = x.shape
    assert x.stride(2) == 1 and cos_sin.shape == (T, D) and cos_sin.dtype == torch.float32 and D % 2 == 0
    out = torch.empty(T, H, D, dtype=out_dtype, device=x.device)
    block_h = min(16, triton.next_power_of_2(H))
    if T:
        _rope_kernel[(T, triton.cdiv(H, block_h))](x, cos_sin, out, H, x.stride(0), x.stride(1), out.stride(0),
                                                   out.stride(1), cos_sin.stride(0), HALF=D // 2, BLOCK_H=block_h,
                                                   INVERSE=inverse, num_warps=NUM_WARPS)
    return out


def norm_quant(h: torch.Tensor, g: torch.Tensor, eps: float, split: bool):
    """h [T, N] float32, g [N] float32 -> ((codes [T, N] e4m3, scale [T] f32), (dcodes, dscale) | None, rms [T, 1] f32)."""
    T, N = h.shape
    assert h.dtype == torch.float32 and g.dtype == torch.float32 and g.shape == (N,) and h.stride(1) == 1
    codes = torch.empty(T, N, dtype=E4M3, device=h.device)
    scale = torch.empty(T, dtype=torch.float32, device=h.device)
    rms = torch.empty(T, dtype=torch.float32, device=h.device)
    dcodes = torch.empty_like(codes) if split else codes
    dscale = torch.empty_like(scale) if split else scale
    if T:
        _norm_quant_kernel[(T,)](h, g, codes, scale, rms, dcodes, dscale, N, h.stride(0), codes.stride(0),
                                 dcodes.stride(0), eps, SPLIT=split, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return (codes, scale), ((dcodes, dscale) if split else None), rms[:, None]


def silu_mul_quant(gu: torch.Tensor, F: int):
    """gu [T, 2F] (bf16 or f32; gate then up) -> (codes [T, F] e4m3, scale [T] f32) of silu(gate) * up."""
    T = gu.shape[0]
    assert gu.shape[1] == 2 * F and gu.stride(1) == 1
    codes = torch.empty(T, F, dtype=E4M3, device=gu.device)
    scale = torch.empty(T, dtype=torch.float32, device=gu.device)
    if T:
        _silu_mul_quant_kernel[(T,)](gu, codes, scale, F, gu.stride(0), codes.stride(0), BLOCK=BLOCK,
                                     num_warps=NUM_WARPS)
    return codes, scale


def quant_rows(x: torch.Tensor):
    """x [T, N] (bf16 or f32) -> (codes [T, N] e4m3, scale [T] f32)."""
    T, N = x.shape
    assert x.stride(1) == 1
    codes = torch.empty(T, N, dtype=E4M3, device=x.device)
    scale = torch.empty(T, dtype=torch.float32, device=x.device)
    if T:
        _quant_rows_kernel[(T,)](x, codes, scale, N, x.stride(0), codes.stride(0), BLOCK=BLOCK, num_warps=NUM_WARPS)
    return codes, scale


# ---- references: plain PyTorch, same semantics -----------------------------------------------------

def quant_rows_ref(x: torch.Tensor):
    x = x.float()
    s = x.abs().amax(dim=-1) / E4M3_MAX if x.shape[-1] else x.new_ones(x.shape[0])
    s = torch.where(s > 0, s, torch.ones_like(s))
    return (x / s[:, None]).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), s


def norm_quant_ref(h: torch.Tensor, g: torch.Tensor, eps: float, split: bool):
    rms = torch.sqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    n = ((h / rms).to(torch.bfloat16).float() * g).to(torch.bfloat16).float()
    nq = quant_rows_ref(n)
    dq = quant_rows_ref(n - nq[1][:, None] * nq[0].float()) if split else None
    return nq, dq, rms


def silu_mul_quant_ref(gu: torch.Tensor, F: int):
    g, u = gu[:, :F].float(), gu[:, F:].float()
    return quant_rows_ref(g / (1.0 + torch.exp(-g)) * u)
