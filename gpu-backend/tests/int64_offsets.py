"""Kernels on tensors whose element offsets pass 2**31 while every stride still fits in int32.

Triton passes an integer argument below 2**31 as int32 and program ids are int32, so `row * stride`
wraps unless one factor is int64 first. Each case here lays its tensors out with a row (or page, or
block-table row) stride of about 2**31 / (rows - 1) elements, so the last row starts past 2**31: an
int32 offset wraps to a negative one and the kernel touches memory outside the tensor (a segfault under
TRITON_INTERPRET, an illegal memory access on a GPU). The big storages are allocated and never
initialized; only the rows the views cover are written, so on the CPU they cost address space, not RAM.

Run by test_fused_kernels.py / test_paged_attention.py in a subprocess (a crash fails one test, not the
run):  python tests/int64_offsets.py CASE  ->  prints "ok CASE" and exits 0.
"""

from __future__ import annotations

import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from reprise_gpu.kernels.paged_attention import paged_attention, paged_attention_ref  # noqa: E402
from reprise_gpu.kernels.rmsnorm import add_rms_norm, add_rms_norm_ref  # noqa: E402
from reprise_gpu.kernels.rope_kv import rope_store_kv, rope_store_kv_ref  # noqa: E402
from reprise_gpu.kernels.silu_mul import silu_mul, silu_mul_ref  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16
TOL = dict(atol=2e-2, rtol=2e-2)  # the interpreter truncates float32 -> bfloat16 (see test_fused_kernels.py)
INT32_LIMIT = 2 ** 31


def far_stride(rows: int) -> int:
    """A row stride (multiple of 64, < 2**31) that puts row rows-1 at or past element 2**31."""
    s = -(-INT32_LIMIT // (rows - 1))
    s = -(-s // 64) * 64
    assert s < INT32_LIMIT and (rows - 1) * s >= INT32_LIMIT
    return s


def far(shape: tuple[int, ...], dtype=DTYPE, seed: int = 0, stride0: int | None = None) -> torch.Tensor:
    """A [shape] view, contiguous but for dim 0, whose last dim-0 slice starts past element 2**31;
    filled with seeded values (randn, or small ints for integer dtypes)."""
    inner = 1
    for d in shape[1:]:
        inner *= d
    s = stride0 or far_stride(shape[0])
    base = torch.empty(s * (shape[0] - 1) + inner, dtype=dtype, device=DEVICE)
    strides = [s] + [0] * (len(shape) - 1)
    acc = 1
    for i in range(len(shape) - 1, 0, -1):
        strides[i] = acc
        acc *= shape[i]
    view = base.as_strided(shape, strides)
    g = torch.Generator().manual_seed(seed)
    view.copy_(torch.randn(shape, generator=g).to(dtype))
    return view


def case_add_rms_norm():
    T, N = 3, 4096                                       # Llama-3-8B's dim
    x, r = far((T, N), seed=0), far((T, N), seed=1)
    w = torch.randn(N, generator=torch.Generator().manual_seed(2)).to(DTYPE).to(DEVICE)
    out, res = add_rms_norm(x, r, w, 1e-5)
    ref_out, ref_res = add_rms_norm_ref(x.contiguous(), r.contiguous(), w, 1e-5)
    torch.testing.assert_close(res, ref_res, **TOL)
    torch.testing.assert_close(out, ref_out, **TOL)


def case_silu_mul():
    T, F = 3, 14336                                      # Llama-3-8B's ffn_dim
    x = far((T, 2 * F))
    torch.testing.assert_close(silu_mul(x), silu_mul_ref(x.contiguous()), **TOL)


def case_rope_store_kv():
    """q, k, v: views of one qkv row (as the model passes them) with a far row stride; the caches: pages
    with a far page stride, the new tokens stored into the last page."""
    T, H, KH, D, PAGE, NB = 3, 32, 8, 128, 16, 3         # Llama-3-8B's heads
    qkv = far((T, (H + 2 * KH) * D))
    cos_sin = torch.randn(T, D, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    cos, sin = cos_sin.chunk(2, dim=-1)
    kv = far((NB, 2, PAGE, KH, D), seed=2)               # page p of K: kv[p, 0]; of V: kv[p, 1]
    slots = torch.tensor([(NB - 1) * PAGE + 3, (NB - 1) * PAGE + 15, 5], device=DEVICE)

    def run(fn, qkv, k_cache, v_cache):
        q, k, v = (t.view(T, -1, D) for t in qkv.split([H * D, KH * D, KH * D], dim=-1))
        fn(q, k, v, cos, sin, k_cache, v_cache, slots)

    ref_qkv, k_ref, v_ref = qkv.contiguous(), kv[:, 0].contiguous(), kv[:, 1].contiguous()  # copies
    run(rope_store_kv_ref, ref_qkv, k_ref, v_ref)
    run(rope_store_kv, qkv, kv[:, 0], kv[:, 1])
    torch.testing.assert_close(qkv, ref_qkv, **TOL)
    torch.testing.assert_close(kv[:, 0], k_ref, **TOL)
    torch.testing.assert_close(kv[:, 1], v_ref, **TOL)


def case_paged_attention():
    """A decode, a 1-token context and a 5-token prefill chunk in one batch: q and out rows, K/V pages and
    block-table rows all with far strides; every sequence reads the last (farthest) page, and the far
    q rows attend to more than one key (so a wrong q changes the output)."""
    H, KH, D, PAGE, NB = 32, 8, 128, 16, 3
    new, ctx = [1, 1, 5], [40, 1, 20]
    tables = [[2, 0, 1], [2, 0, 0], [1, 2, 0]]
    T, B = sum(new), len(new)
    qo = far((T, 2, H, D))                               # q: qo[:, 0], out: qo[:, 1]
    kv = far((NB, 2, PAGE, KH, D), seed=1)
    bt = far((B, len(tables[0])), dtype=torch.int32)
    bt.copy_(torch.tensor(tables, dtype=torch.int32))
    cu = torch.tensor([0, 1, 2, 7], dtype=torch.int32, device=DEVICE)
    lens = torch.tensor(ctx, dtype=torch.int32, device=DEVICE)
    q, out = qo[:, 0], qo[:, 1]
    paged_attention(q, kv[:, 0], kv[:, 1], cu, lens, bt, max(new), out=out)
    ref = paged_attention_ref(q.contiguous(), kv[:, 0].contiguous(), kv[:, 1].contiguous(), cu, lens,
                              bt.contiguous(), max(new))
    torch.testing.assert_close(out, ref, **TOL)


def run_in_subprocess(case: str) -> None:
    """This script with CASE in a subprocess (for the tests): a crash fails the caller's assertion."""
    import subprocess

    res = subprocess.run([sys.executable, os.path.abspath(__file__), case], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0 and f"ok {case}" in res.stdout, \
        f"rc={res.returncode} (-11: segfault, an out-of-bounds access)\n{res.stdout}\n{res.stderr[-3000:]}"


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}

if __name__ == "__main__":
    for name in sys.argv[1:] or CASES:
        CASES[name]()
        print("ok", name, flush=True)
