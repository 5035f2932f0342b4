"""CUDA arithmetic of the speculator: fused Triton quantization, `torch._scaled_mm`, paged attention.

Same interface as cpu_ops. Batch invariance here is not by construction as on the CPU: it rests on
fixed kernels and tiles (kernels.BLOCK per row, the paged-attention kernel always in its 64-row
prefill tiling, cuBLAS FP8 GEMMs with rowwise scales) and is checked per shape on the GPU by
`python -m reprise_gpu.speculator.check_invariance`. Everything the bits depend on is in
`backend_name`, hence in the fingerprint.
"""

from __future__ import annotations

import torch
import triton

from ..kernels import paged_attention as pa
from . import kernels
from .recipe import SPECULATOR_VERSION

PAGE = 64                      # tokens per page of the speculator's own K/V store
_out_dtype: torch.dtype | None = None


def setup(device: torch.device) -> None:
    """Pick the GEMM output dtype once: float32 where cuBLAS supports it with rowwise scales, else BF16."""
    global _out_dtype
    if _out_dtype is not None:
        return
    if device.type != "cuda":            # CPU smoke tests of this path (Triton interpreter)
        _out_dtype = torch.float32
        return
    a = torch.ones(16, 32, device=device).to(torch.float8_e4m3fn)
    b = torch.ones(16, 32, device=device).to(torch.float8_e4m3fn)
    s = torch.ones(16, 1, device=device)
    try:
        torch._scaled_mm(a, b.t(), scale_a=s, scale_b=s.t(), out_dtype=torch.float32)
        _out_dtype = torch.float32
    except RuntimeError:
        _out_dtype = torch.bfloat16


def backend_name(device: torch.device) -> str:
    major, minor = torch.cuda.get_device_capability(device) if device.type == "cuda" else (0, 0)
    return (f"cuda-sm{major}{minor}/torch-{torch.__version__}/cuda-{torch.version.cuda}/triton-{triton.__version__}"
            f"/spec-kernels-{SPECULATOR_VERSION}:block={kernels.BLOCK}:warps={kernels.NUM_WARPS}"
            f"/gemm-out={str(_out_dtype).removeprefix('torch.')}/attn:page={PAGE}:block_n={pa.BLOCK_N}:rows=64")


norm_quant = kernels.norm_quant
silu_mul_quant = kernels.silu_mul_quant
ATTN_DTYPE = torch.bfloat16     # the paged-attention kernel reads q in the cache's dtype


def rope(x: torch.Tensor, cos_sin: torch.Tensor, inverse: bool = False, out_dtype=torch.float32) -> torch.Tensor:
    return kernels.rope(x.contiguous(), cos_sin, out_dtype=out_dtype, inverse=inverse)


def quant_rows(x: torch.Tensor):
    return kernels.quant_rows(x.contiguous())


def linear(xq, w: torch.Tensor, sw: torch.Tensor, wide: bool = False, fast: bool = False) -> torch.Tensor:
    """FP8 GEMM, rowwise scales: (xq[1][:, None] * xq[0]) @ (sw[:, None] * w).T; BF16 out when `wide`.
    fast: cuBLAS's fast FP8 accumulation (fewer promotions to float32: cheaper, deterministic, less exact)."""
    dtype = torch.bfloat16 if wide else _out_dtype
    if not w.is_cuda:                    # CPU _scaled_mm has per-tensor scales only: the smoke-test stand-in
        one = torch.ones((), device=w.device)
        out = torch._scaled_mm(xq[0], w.t(), scale_a=one, scale_b=one, out_dtype=torch.float32)
        out = (out * xq[1][:, None] * sw[None, :]).to(dtype)
    else:
        out = torch._scaled_mm(xq[0], w.t(), scale_a=xq[1][:, None], scale_b=sw[None, :], out_dtype=dtype,
                               use_fast_accum=fast)
    return out if wide else out.float()


def kv_split_linear(xq, dq, w, sw, r, sr, fast: bool = False) -> torch.Tensor:
    return linear(xq, w, sw, fast=fast) + linear(dq, w, sw, fast=fast) + linear(xq, r, sr, fast=fast)


class KVStore:
    """The K/V attention reads, in BF16 pages [n_layers][num_pages, PAGE, KH, D]; one block table per sequence."""

    def __init__(self, args, seqs, lens, device, window: int = 0):
        self.args, self.lens, self.device, self.window = args, lens, device, window
        starts = [s.start for s in seqs]
        ctx = [s + n for s, n in zip(starts, lens)]
        pages = [-(-c // PAGE) for c in ctx]
        first = [sum(pages[:i]) for i in range(len(seqs))]
        total = max(1, sum(pages))
        shape = (args.n_layers, total, PAGE, args.n_kv_heads, args.head_dim)
        self.k = torch.zeros(shape, dtype=torch.bfloat16, device=device)
        self.v = torch.zeros(shape, dtype=torch.bfloat16, device=device)
        width = max(1, max(pages) if pages else 1)
        self.block_tables = torch.tensor([list(range(f, f + p)) + [0] * (width - p) for f, p in zip(first, pages)],
                                         dtype=torch.int32, device=device)
        self.context_lens = torch.tensor(ctx, dtype=torch.int32, device=device)
        self.cu = torch.tensor([0] + [sum(lens[:i + 1]) for i in range(len(lens))], dtype=torch.int32, device=device)
        self.max_q = max(2, max(lens) if lens else 2)     # >= 2 keeps the kernel in its 64-row prefill tiling
        self.slots = torch.cat([torch.arange(f * PAGE + s, f * PAGE + s + n, device=device)
                                for f, s, n in zip(first, starts, lens)]) if lens else torch.zeros(0, dtype=torch.long)
        for f, s in zip(first, seqs):
            if s.start:
                if s.past_kv is None:
                    raise ValueError("a sequence that starts after position 0 needs past_kv")
                past = s.past_kv.to(device=device, dtype=torch.bfloat16)            # [L, 2, KH, start, D]
                kf = self.k.view(args.n_layers, -1, args.n_kv_heads, args.head_dim)
                vf = self.v.view(args.n_layers, -1, args.n_kv_heads, args.head_dim)
                kf[:, f * PAGE:f * PAGE + s.start] = past[:, 0].transpose(1, 2)
                vf[:, f * PAGE:f * PAGE + s.start] = past[:, 1].transpose(1, 2)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        kf = self.k[layer].view(-1, self.args.n_kv_heads, self.args.head_dim)
        vf = self.v[layer].view(-1, self.args.n_kv_heads, self.args.head_dim)
        kf.index_copy_(0, self.slots, k.to(torch.bfloat16))
        vf.index_copy_(0, self.slots, v.to(torch.bfloat16))

    def attend(self, layer: int, q: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return pa.paged_attention(q.to(torch.bfloat16).contiguous(), self.k[layer], self.v[layer], self.cu,
                                  self.context_lens, self.block_tables, self.max_q,
                                  scale=self.args.head_dim ** -0.5, window=self.window)

    def new_kv(self, i: int) -> torch.Tensor:
        a, n = self.args, self.lens[i]
        base = int(self.cu[i])
        sl = self.slots[base:base + n]
        k = self.k.view(a.n_layers, -1, a.n_kv_heads, a.head_dim)[:, sl].float().transpose(1, 2)
        v = self.v.view(a.n_layers, -1, a.n_kv_heads, a.head_dim)[:, sl].float().transpose(1, 2)
        return torch.stack([k, v], dim=1)
