"""RMSNorm (Zhang & Sennrich, 2019), optionally fused with the residual add before it, in one kernel.

For each row t of x [T, N] (dtype bf16/f16/f32; weight w [N], usually the same dtype):

    r[t]   = x[t] + residual[t]                       # rounded to dtype: the residual stream
    n[t]   = r[t] * rsqrt(mean(r[t]^2) + eps)          # float32, rounded to dtype
    out[t] = w * n[t]                                   # float32 product, rounded to promote(w, x) dtype

which is HF's LlamaRMSNorm (`weight * normed.to(dtype)`) applied to `x + residual`, rounding for rounding.
Without a residual, r = x and only `out` is written.

Blocked algorithm, one program per row (N fits one block: 576 -> 1024, 4096 -> 4096 lanes):

    xr = load(x[t]) + load(residual[t])         # read 2N
    store(residual_out[t], xr)                   # write N
    rstd = rsqrt(sum(xr * xr) / N + eps)
    store(out[t], w * (xr * rstd))               # read N (w, cached), write N

Memory-bound: a decode step at batch B moves ~5 * B * N * itemsize bytes, where the unfused PyTorch
sequence (add, float, pow, mean, add, rsqrt, mul, to, mul) launches 9 kernels and moves several times that.
No host sync, grid (T,): CUDA-graph capturable.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(
    # pointers
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr,
    # sizes
    N, eps,
    # strides (last dims contiguous)
    stride_xt, stride_rt, stride_ot, stride_rot,
    # meta-parameters
    HAS_RESIDUAL: tl.constexpr, BLOCK_N: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_N)
    ok = offs < N
    x = tl.load(x_ptr + t * stride_xt + offs, mask=ok, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + t * stride_rt + offs, mask=ok, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(res_out_ptr.dtype.element_ty)  # round like `x + r`
        tl.store(res_out_ptr + t * stride_rot + offs, x, mask=ok)
    xf = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(xf * xf, axis=0) / N + eps)
    normed = (xf * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)  # HF rounds before the weight
    w = tl.load(w_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + t * stride_ot + offs, (w * normed).to(out_ptr.dtype.element_ty), mask=ok)


def _num_warps(block_n: int) -> int:
    return 1 if block_n <= 512 else 2 if block_n <= 1024 else 4 if block_n <= 4096 else 8


def _launch(x, residual, weight, eps):
    T, N = x.shape
    assert weight.shape == (N,) and weight.stride(0) == 1, (weight.shape, weight.stride())
    assert x.stride(1) == 1, x.stride()
    out = torch.empty(T, N, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    res_out = out
    if residual is not None:
        assert residual.shape == x.shape and residual.dtype == x.dtype and residual.stride(1) == 1
        res_out = torch.empty(T, N, dtype=x.dtype, device=x.device)
    if T == 0:
        return out, res_out
    block_n = triton.next_power_of_2(N)
    r = x if residual is None else residual
    _rms_norm_kernel[(T,)](
        x, r, weight, out, res_out,
        N, eps,
        x.stride(0), r.stride(0), out.stride(0), res_out.stride(0),
        HAS_RESIDUAL=residual is not None, BLOCK_N=block_n, num_warps=_num_warps(block_n),
    )
    return out, res_out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """out[t] = weight * (x[t] * rsqrt(mean(x[t]^2) + eps)). x: [T, N]; weight: [N] -> [T, N] in the promoted dtype."""
    return _launch(x, None, weight, eps)[0]


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """r = x + residual; (rms_norm(r), r). x, residual: [T, N], one dtype; weight: [N] -> two new [T, N]."""
    return _launch(x, residual, weight, eps)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Same as `rms_norm`: the normalization in float32, the weight product in x's dtype (HF's order)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def add_rms_norm_ref(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Same as `add_rms_norm`: the sum rounded to x's dtype, then `rms_norm_ref`."""
    r = x + residual
    return rms_norm_ref(r, weight, eps), r
