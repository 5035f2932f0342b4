"""SwiGLU's activation (Shazeer, 2020) on the fused gate_up projection, in one kernel.

For x [T, 2F] = [gate | up] (the output of `gate_up_proj`):

    out[t, i] = silu(gate[t, i]) * up[t, i],   silu(g) = g / (1 + exp(-g))

silu in float32 rounded to x's dtype, then the product in float32 rounded again: exactly PyTorch's
`F.silu(gate) * up` in that dtype (and HF's LlamaMLP), so the kernel changes no rounding.

Blocked algorithm, grid (T, cdiv(F, BLOCK_F)):

    g, u = load(x[t, i0:i0+BLOCK_F]), load(x[t, F+i0:F+i0+BLOCK_F])    # read 2 * BLOCK_F
    store(out[t, i0:...], silu(g) * u)                                  # write BLOCK_F

Memory-bound: reads 2TF and writes TF elements once, where `split; silu; mul` launches 2 kernels and
writes then re-reads the silu output. No host sync: CUDA-graph capturable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

BLOCK_F = 1024  # 8 warps x 32 lanes x 4 elements


@triton.jit
def _silu_mul_kernel(
    # pointers
    x_ptr, out_ptr,
    # sizes
    F,
    # strides (last dims contiguous)
    stride_xt, stride_ot,
    # meta-parameters
    BLOCK_F: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    ok = offs < F
    g = tl.load(x_ptr + t * stride_xt + offs, mask=ok, other=0.0).to(tl.float32)
    u = tl.load(x_ptr + t * stride_xt + F + offs, mask=ok, other=0.0).to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(out_ptr.dtype.element_ty).to(tl.float32)  # F.silu rounds here
    tl.store(out_ptr + t * stride_ot + offs, (act * u).to(out_ptr.dtype.element_ty), mask=ok)


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    """out = silu(x[:, :F]) * x[:, F:]. x: [T, 2F], last dim contiguous -> [T, F], x's dtype."""
    T, two_f = x.shape
    assert two_f % 2 == 0 and x.stride(1) == 1, (x.shape, x.stride())
    f = two_f // 2
    out = torch.empty(T, f, dtype=x.dtype, device=x.device)
    if T == 0:
        return out
    _silu_mul_kernel[(T, triton.cdiv(f, BLOCK_F))](
        x, out, f, x.stride(0), out.stride(0), BLOCK_F=BLOCK_F, num_warps=8 if f >= BLOCK_F else 4,
    )
    return out


def silu_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """Same as `silu_mul`, in PyTorch (each op computes in float32 and rounds to x's dtype)."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up
