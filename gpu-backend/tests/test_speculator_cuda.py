"""The CUDA path of the speculator: fused quantization kernels vs references, and row invariance.

On a CPU-only machine the kernels run in the Triton interpreter (whose BF16/FP8 conversions are not
round-to-nearest, so kernel-vs-reference agreement is loose there) and only the plumbing is checked;
with CUDA the invariance checks run at SmolLM2's shapes (`check_invariance` does the full sweep).
"""

import pytest
import torch

from reprise_gpu.config import get_model_args
from reprise_gpu.speculator import check_invariance, cuda_ops, kernels

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")


def close_fp8(codes, scale, ref_codes, ref_scale, ulps):
    got = codes.float() * scale[:, None]
    ref = ref_codes.float() * ref_scale[:, None]
    tol = ulps * 2.0 ** -3 * ref.abs() + ulps * 2.0 ** -9 * ref_scale[:, None]
    return bool(((got - ref).abs() <= tol).all())


@pytest.mark.parametrize("T,N", [(1, 64), (5, 1300), (33, 576)])
def test_kernels_run_with_their_shapes(T, N):
    h = torch.randn(T, N, device=DEV)
    (c, s), (dc, ds), rms = kernels.norm_quant(h, torch.ones(N, device=DEV), 1e-5, True)
    assert c.dtype == dc.dtype == torch.float8_e4m3fn and c.shape == (T, N) and s.shape == ds.shape == (T,)
    assert rms.shape == (T, 1) and kernels.silu_mul_quant(torch.randn(T, 2 * N, device=DEV), N)[0].shape == (T, N)


@pytest.mark.skipif(not CUDA, reason="needs CUDA: the Triton interpreter's BF16/FP8 casts are not round-to-nearest-even")
@pytest.mark.parametrize("T,N", [(1, 64), (5, 1300), (33, 576)])
def test_kernels_match_references(T, N):
    torch.manual_seed(T)
    ulps = 0
    h = torch.randn(T, N, device=DEV) * 3
    g = torch.rand(N, device=DEV) + 0.5
    (c, s), (dc, ds), rms = kernels.norm_quant(h, g, 1e-5, True)
    (c2, s2), (dc2, ds2), rms2 = kernels.norm_quant_ref(h, g, 1e-5, True)
    torch.testing.assert_close(rms, rms2, rtol=1e-6, atol=0)
    assert close_fp8(c, s, c2, s2, max(ulps, 1))          # rms may differ in its last bit: allow one e4m3 step
    gu = torch.randn(T, 2 * N, device=DEV).bfloat16()
    c, s = kernels.silu_mul_quant(gu, N)
    c2, s2 = kernels.silu_mul_quant_ref(gu, N)
    assert close_fp8(c, s, c2, s2, max(ulps, 1))
    x = torch.randn(T, N, device=DEV).bfloat16()
    c, s = kernels.quant_rows(x)
    c2, s2 = kernels.quant_rows_ref(x)
    assert torch.equal(s, s2) and close_fp8(c, s, c2, s2, ulps)
    from reprise_gpu.speculator import cpu_ops
    q = torch.randn(T, 5, 64, device=DEV)
    cs = torch.rand(T, 64, device=DEV)
    for inverse in (False, True):
        torch.testing.assert_close(kernels.rope(q, cs, inverse=inverse), cpu_ops.rope(q, cs, inverse=inverse),
                                   rtol=1e-6, atol=1e-6)


def test_row_invariance_of_ops_and_model():
    cuda_ops.setup(DEV)
    args = get_model_args("smollm2-135m" if CUDA else "tiny")
    m_values = (1, 2, 7, 64, 133, 4096) if CUDA else (1, 2, 7)
    bad = check_invariance.op_checks(args, DEV, m_values)
    small = get_model_args("smollm2-135m" if CUDA else "tiny", n_layers=2)
    bad.update(check_invariance.model_checks(small, DEV, lengths=(1, 37, 300) if CUDA else (1, 9)))
    assert not {k: v for k, v in bad.items() if v}


def test_kernels_compile_for_sm90():
    """The JIT path (not the interpreter) compiles every speculator kernel for the H200, no GPU needed."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-m", "reprise_gpu.speculator.check_invariance", "--compile-only"],
                         env=env, capture_output=True, text=True, timeout=600,
                         cwd=os.path.join(os.path.dirname(__file__), ".."))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("sm_90") == 10
