"""Fused decode kernels (RMSNorm + residual, RoPE + K/V store, SiLU * up) vs their PyTorch references,
and the whole model on the Triton path vs the reference path.

Without CUDA the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), which
rounds float32 -> bfloat16 by truncation where the GPU rounds to nearest even: bfloat16 tolerances are a
couple of ulps.
"""

import os
import sys

import pytest
import torch

from reprise_gpu.config import get_model_args
from reprise_gpu.gguf_loader import random_state_dict
from reprise_gpu.kernels.rmsnorm import add_rms_norm, add_rms_norm_ref, rms_norm, rms_norm_ref
from reprise_gpu.kernels.rope_kv import rope_store_kv, rope_store_kv_ref
from reprise_gpu.kernels.silu_mul import silu_mul, silu_mul_ref
from reprise_gpu.layers import ops
from reprise_gpu.models.llama import AttnMetadata, alloc_kv_cache, build_model

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=2e-3, rtol=2e-3),
       torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def randn(*shape, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T,N", [(1, 64), (7, 133), (133, 576), (3, 4096)])
def test_rms_norm(T, N, dtype):
    x, w = randn(T, N, dtype=dtype, seed=0, scale=3.0), randn(N, dtype=dtype, seed=1)
    out = rms_norm(x, w, 1e-5)
    assert out.dtype == dtype and out.shape == (T, N)
    torch.testing.assert_close(out, rms_norm_ref(x, w, 1e-5), **TOL[dtype])


def test_rms_norm_float32_weight_promotes():
    """A float32 norm weight with bfloat16 activations gives float32 out, as `weight * x.to(bf16)` does."""
    x, r = randn(5, 133, dtype=torch.bfloat16, seed=0), randn(5, 133, dtype=torch.bfloat16, seed=1)
    w = randn(133, dtype=torch.float32, seed=2)
    out, res = add_rms_norm(x, r, w, 1e-5)
    ref_out, ref_res = add_rms_norm_ref(x, r, w, 1e-5)
    assert out.dtype == ref_out.dtype == torch.float32 and res.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref_out, **TOL[torch.bfloat16])
    torch.testing.assert_close(res, ref_res, **TOL[torch.bfloat16])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T,N", [(1, 64), (7, 133), (133, 576), (3, 4096)])
def test_add_rms_norm(T, N, dtype):
    x, r = randn(T, N, dtype=dtype, seed=0), randn(T, N, dtype=dtype, seed=1, scale=10.0)
    w = randn(N, dtype=dtype, seed=2)
    x_strided = randn(T, N + 5, dtype=dtype, seed=3)[:, :N]  # a row stride that is not N
    x_strided.copy_(x)
    out, res = add_rms_norm(x_strided, r, w, 1e-6)
    ref_out, ref_res = add_rms_norm_ref(x, r, w, 1e-6)
    torch.testing.assert_close(res, ref_res, **TOL[dtype])
    torch.testing.assert_close(out, ref_out, **TOL[dtype])
    if dtype == torch.float32:
        assert torch.equal(res, ref_res)  # one float32 add, no rounding to differ on


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T,F", [(1, 128), (5, 133), (133, 1536), (2, 14336)])
def test_silu_mul(T, F, dtype):
    x = randn(T, 2 * F, dtype=dtype, seed=0, scale=4.0)
    out = silu_mul(x)
    assert out.dtype == dtype and out.shape == (T, F)
    torch.testing.assert_close(out, silu_mul_ref(x), **TOL[dtype])


HEADS = {"gqa2_d16": (4, 2, 16), "smollm2_gqa3_d64": (9, 3, 64), "gqa3_d48": (6, 2, 48), "llama3_8b": (32, 8, 128)}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("block_size", [4, 16])
@pytest.mark.parametrize("heads", HEADS.values(), ids=HEADS.keys())
@pytest.mark.parametrize("T", [1, 5, 37])
def test_rope_store_kv(T, heads, block_size, dtype):
    """q, k rotated in place inside one qkv buffer; K/V land at shuffled slots; other slots untouched."""
    H, KH, D = heads
    qkv = randn(T, (H + 2 * KH) * D, dtype=dtype, seed=0)
    cos_sin = randn(T, D, dtype=torch.float32, seed=1)
    cos, sin = cos_sin.unsqueeze(1).chunk(2, dim=-1)  # [T, 1, D/2] strided views, as RotaryEmbedding gives
    num_blocks = -(-T // block_size) + 3
    slots = torch.randperm(num_blocks * block_size, generator=torch.Generator().manual_seed(2))[:T].to(DEVICE)
    cache = randn(2, num_blocks, block_size, KH, D, dtype=dtype, seed=3)

    def run(fn):
        buf, kv = qkv.clone(), cache.clone()
        q, k, v = (t.view(T, -1, D) for t in buf.split([H * D, KH * D, KH * D], dim=-1))
        fn(q, k, v, cos, sin, kv[0], kv[1], slots)
        return buf, kv, k

    buf, kv, k = run(rope_store_kv)
    ref_buf, ref_kv, _ = run(rope_store_kv_ref)
    torch.testing.assert_close(buf, ref_buf, **TOL[dtype])
    torch.testing.assert_close(kv, ref_kv, **TOL[dtype])
    flat = kv.view(2, -1, KH, D)
    assert torch.equal(flat[0, slots], k)  # what a KVCacheWriter hook sees is what the cache holds
    assert torch.equal(buf[:, -KH * D:].view(T, KH, D), flat[1, slots])  # v stored as is
    untouched = torch.ones(num_blocks * block_size, dtype=torch.bool, device=DEVICE)
    untouched[slots] = False
    assert torch.equal(flat[:, untouched], cache.view(2, -1, KH, D)[:, untouched])


def test_rope_is_position_rotation():
    """With the model's own cos/sin table, rotating by position p then dotting equals relative rotation."""
    from reprise_gpu.layers.rotary import RotaryEmbedding

    rot = RotaryEmbedding(16, 64, 10000.0).to(DEVICE)
    x = randn(1, 1, 16, dtype=torch.float32, seed=0).expand(2, 1, 16).contiguous()
    y = randn(1, 1, 16, dtype=torch.float32, seed=1).expand(2, 1, 16).contiguous()
    pos = torch.tensor([3, 10], device=DEVICE)
    kv = torch.zeros(2, 2, 8, 1, 16, device=DEVICE)
    cos, sin = rot(pos)
    rope_store_kv(x, y, y.clone(), cos, sin, kv[0], kv[1], torch.tensor([0, 1], device=DEVICE))
    cos2, sin2 = rot(pos + 5)
    x2, y2 = randn(1, 1, 16, dtype=torch.float32, seed=0).expand(2, 1, 16).contiguous(), \
        randn(1, 1, 16, dtype=torch.float32, seed=1).expand(2, 1, 16).contiguous()
    rope_store_kv(x2, y2, y2.clone(), cos2, sin2, kv[0], kv[1], torch.tensor([2, 3], device=DEVICE))
    # q at position 3 . k at 10 == q at 8 . k at 15
    torch.testing.assert_close((x[0] * y[1]).sum(), (x2[0] * y2[1]).sum(), atol=1e-5, rtol=1e-5)


# ---- the whole model ------------------------------------------------------------------------------
def model_step(model, dtype, mode, hook=None):
    """One mixed step (prefill 13, decode 1, prefill 5 with 15 cached) in ops mode `mode` -> (hidden, kv cache)."""
    args = model.args
    kv = alloc_kv_cache(args, 32, 4, dtype, DEVICE)
    attn = AttnMetadata.build([13, 1, 5], [13, 9, 20], [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12]], 4,
                              device=DEVICE)
    ids = torch.randint(0, args.vocab_size, (19,), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    pos = torch.tensor(list(range(13)) + [8] + list(range(15, 20)), device=DEVICE)
    with torch.inference_mode(), ops.kernel_mode(mode):
        return model(ids, pos, attn, kv), kv


MODEL_TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.bfloat16: dict(atol=0.15, rtol=0.05)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_model_triton_path_matches_reference_path(dtype):
    args = get_model_args("tiny")
    model = build_model(args, random_state_dict(args, seed=0, dtype=dtype, device=DEVICE))
    h_ref, kv_ref = model_step(model, dtype, "reference")
    h, kv = model_step(model, dtype, "triton")
    torch.testing.assert_close(h, h_ref, **MODEL_TOL[dtype])
    torch.testing.assert_close(kv, kv_ref, **MODEL_TOL[dtype])


def test_kv_writer_hook_on_triton_path():
    """The fused RoPE + store kernel keeps the hook contract: inp[0], inp[1] are the stored K (after RoPE), V."""
    args = get_model_args("tiny")
    model = build_model(args, random_state_dict(args, seed=1, dtype=torch.float32, device=DEVICE))
    seen = []
    handle = model.layers[1].self_attn.kv_writer.register_forward_hook(
        lambda mod, inp, out: seen.append((inp[0].clone(), inp[1].clone(), inp[4].clone())))
    _, kv = model_step(model, torch.float32, "triton")
    handle.remove()
    (k, v, slots), = seen
    cache = kv[1].view(2, -1, args.n_kv_heads, args.head_dim)
    assert k.shape == (19, args.n_kv_heads, args.head_dim)
    assert torch.equal(cache[0, slots], k) and torch.equal(cache[1, slots], v)


@pytest.mark.skipif(torch.cuda.is_available(), reason="counts CPU tensors through the Triton interpreter")
def test_decode_step_kernel_count():
    """A decode step on the fused path: 9 kernels per layer (4 GEMMs, 2 norms, RoPE+store, attention,
    SiLU*up) + 6 per step, and no host sync (CUDA-graph capturable); the unfused path was 45 per layer."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
    from count_kernels import count

    fused = count("tiny", batch=3, mode="triton")
    assert fused["per_layer"] == 9 and fused["fixed"] <= 6 and fused["host_syncs"] == 0, fused
    assert count("tiny", batch=3, mode="reference")["per_layer"] == 45


def test_kernels_compile_for_sm90():
    """The JIT path (not the interpreter) compiles every fused kernel for the H200, no GPU needed."""
    from compile_check import compile_for_sm90

    assert compile_for_sm90("bench_fused_ops.py").count("sm_90") == 8


@pytest.mark.parametrize("case", ["add_rms_norm", "silu_mul", "rope_store_kv"])
def test_offsets_past_2_31_elements(case):
    """Rows, pages and slots past element 2**31 with int32 strides: every offset product is int64."""
    from int64_offsets import run_in_subprocess

    run_in_subprocess(case)
