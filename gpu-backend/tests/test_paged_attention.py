"""Paged attention: Triton kernel vs float32 reference, reference vs dense causal attention, K/V store.

Without CUDA the Triton kernel runs in the interpreter on CPU tensors: tests/conftest.py sets
TRITON_INTERPRET=1 before triton is imported (Triton reads it at import and at each @triton.jit).
"""

import math

import pytest
import torch
import torch.nn.functional as F

import reprise_gpu.kernels.paged_attention as pa
from reprise_gpu.kernels.kv_store import store_kv, store_kv_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
assert DEVICE == "cuda" or pa._INTERPRETED, "without CUDA, TRITON_INTERPRET=1 must be set before triton is imported"


# (new tokens, past tokens) per sequence
BATCH_MIXES = {
    "decode": [(1, 4), (1, 16), (1, 64), (1, 0), (1, 70)],
    "prefill_133": [(133, 0)],
    "prefill_with_context": [(20, 45), (7, 0), (33, 16)],
    "mixed_skewed": [(1, 130), (3, 2), (40, 24), (1, 9)],
}
HEADS = {"gqa2_d16": (4, 2, 16), "smollm2_gqa3_d64": (9, 3, 64)}  # (H, KH, D)
TOL = {torch.float32: dict(atol=2e-5, rtol=1e-5), torch.float16: dict(atol=2e-3, rtol=2e-3),
       torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def make_case(mix, heads, block_size, dtype, seed=0):
    """Random q and dense per-sequence K/V stored in shuffled pages; returns kernel args + dense K/V."""
    g = torch.Generator().manual_seed(seed)
    H, KH, D = heads
    ctxs = [n + p for n, p in mix]
    pages_per_seq = [math.ceil(c / block_size) for c in ctxs]
    num_blocks = sum(pages_per_seq) + 3
    order = torch.randperm(num_blocks, generator=g).tolist()
    tables, i = [], 0
    for n_pages in pages_per_seq:
        tables.append(order[i:i + n_pages])
        i += n_pages
    width = max(pages_per_seq)
    block_tables = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
    k_cache = torch.randn(num_blocks, block_size, KH, D, generator=g).to(dtype)  # garbage outside the sequences
    v_cache = torch.randn(num_blocks, block_size, KH, D, generator=g).to(dtype)
    dense_k, dense_v = [], []
    for ctx, table in zip(ctxs, tables):
        k = torch.randn(ctx, KH, D, generator=g).to(dtype)
        v = torch.randn(ctx, KH, D, generator=g).to(dtype)
        slots = torch.tensor([table[p // block_size] * block_size + p % block_size for p in range(ctx)])
        store_kv(k, v, k_cache, v_cache, slots)
        dense_k.append(k)
        dense_v.append(v)
    T = sum(n for n, _ in mix)
    q = torch.randn(T, H, D, generator=g).to(dtype)
    cu = torch.tensor([0] + torch.tensor([n for n, _ in mix]).cumsum(0).tolist(), dtype=torch.int32)
    args = (q, k_cache, v_cache, cu, torch.tensor(ctxs, dtype=torch.int32), block_tables,
            max(n for n, _ in mix))
    return args, dense_k, dense_v


def to_device(args):
    return tuple(a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("block_size", [8, 16])
@pytest.mark.parametrize("heads", HEADS.values(), ids=HEADS.keys())
@pytest.mark.parametrize("mix", BATCH_MIXES.values(), ids=BATCH_MIXES.keys())
def test_triton_matches_ref(mix, heads, block_size, dtype):
    args, _, _ = make_case(mix, heads, block_size, dtype)
    args = to_device(args)
    out = pa.paged_attention(*args)
    ref = pa.paged_attention_ref(*args, out=torch.empty(args[0].shape, dtype=torch.float32, device=DEVICE))
    assert out.dtype == dtype and out.shape == args[0].shape
    torch.testing.assert_close(out.float(), ref, **TOL[dtype])


@pytest.mark.parametrize("block_size", [1, 8, 16])
@pytest.mark.parametrize("heads", HEADS.values(), ids=HEADS.keys())
@pytest.mark.parametrize("mix", BATCH_MIXES.values(), ids=BATCH_MIXES.keys())
def test_ref_matches_dense_causal(mix, heads, block_size):
    args, dense_k, dense_v = make_case(mix, heads, block_size, torch.float32, seed=1)
    q, cu = args[0], args[3].tolist()
    ref = pa.paged_attention_ref(*args)
    for b, (n, past) in enumerate(mix):
        qb = q[cu[b]:cu[b + 1]].transpose(0, 1)  # [H, n, D]
        kb, vb = dense_k[b].transpose(0, 1), dense_v[b].transpose(0, 1)  # [KH, ctx, D]
        # query i sits at position past + i: it sees keys 0..past+i (bottom-right aligned causal mask)
        mask = torch.arange(past + n)[None, :] <= (past + torch.arange(n))[:, None]
        dense = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, enable_gqa=True).transpose(0, 1)
        torch.testing.assert_close(ref[cu[b]:cu[b + 1]], dense, atol=1e-5, rtol=1e-5)


def test_decode_tile_equals_prefill_tile_rows():
    """The last token of a prefill and the same token decoded alone give the same values."""
    args, _, _ = make_case([(40, 0)], HEADS["smollm2_gqa3_d64"], 16, torch.float32, seed=2)
    q, kc, vc, cu, ctx, bt, _ = to_device(args)
    full = pa.paged_attention(q, kc, vc, cu, ctx, bt, 40)
    last = pa.paged_attention(q[-1:].contiguous(), kc, vc, torch.tensor([0, 1], dtype=torch.int32, device=DEVICE),
                              ctx, bt, 1)
    torch.testing.assert_close(last[0], full[-1], atol=1e-6, rtol=1e-6)


def test_out_argument_and_custom_scale():
    args, _, _ = make_case(BATCH_MIXES["prefill_with_context"], HEADS["gqa2_d16"], 8, torch.float32, seed=3)
    args = to_device(args)
    out = torch.full_like(args[0], float("nan"))
    res = pa.paged_attention(*args, scale=0.3, out=out)
    assert res is out
    torch.testing.assert_close(out, pa.paged_attention_ref(*args, scale=0.3), **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_store_kv_matches_ref(dtype):
    g = torch.Generator().manual_seed(4)
    num_blocks, block_size, KH, D, T = 6, 8, 3, 16, 29
    slots = torch.randperm(num_blocks * block_size, generator=g)[:T]
    k, v = torch.randn(T, KH, D, generator=g).to(dtype), torch.randn(T, KH, D, generator=g).to(dtype)
    caches = [torch.randn(num_blocks, block_size, KH, D, generator=g).to(dtype) for _ in range(2)]
    ref = [c.clone() for c in caches]
    store_kv(k, v, *caches, slots)
    store_kv_ref(k, v, *ref, slots)
    assert torch.equal(caches[0], ref[0]) and torch.equal(caches[1], ref[1])


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a GPU")
def test_decode_cuda_graph_replay_matches_eager():
    """Captured once, replayed with new contents of the same buffers (the engine's decode path)."""
    args, _, _ = make_case(BATCH_MIXES["decode"], HEADS["smollm2_gqa3_d64"], 16, torch.bfloat16, seed=5)
    q, kc, vc, cu, ctx, bt, max_q = to_device(args)
    out = torch.empty_like(q)
    pa.paged_attention(q, kc, vc, cu, ctx, bt, max_q, out=out)  # compile before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        pa.paged_attention(q, kc, vc, cu, ctx, bt, max_q, out=out)
    for seed in range(3):
        q.copy_(torch.randn(q.shape, generator=torch.Generator().manual_seed(seed)).to(q))
        ctx.copy_(torch.clamp(ctx - seed, min=1))
        graph.replay()
        torch.testing.assert_close(out, pa.paged_attention(q, kc, vc, cu, ctx, bt, max_q), atol=0, rtol=0)


def test_kernel_compiles_for_sm90():
    """The JIT path (not the interpreter) compiles for the H200 within its shared memory, no GPU needed."""
    from compile_check import compile_for_sm90

    assert compile_for_sm90("bench_paged_attention.py").count("sm_90") == 4


def test_offsets_past_2_31_elements():
    """q/out rows, K/V pages and block-table rows past element 2**31 with int32 strides (int64 offsets)."""
    from int64_offsets import run_in_subprocess

    run_in_subprocess("paged_attention")


@pytest.mark.parametrize("window", [5, 100] if DEVICE == "cpu" else [1, 5, 64, 100])
def test_window_matches_ref_and_rows_do_not_depend_on_tile_mates(window):
    """The speculator's windowed attention: kernel == reference, and a row alone == the same row inside a
    prefill tile, bit for bit on the GPU (both in the 64-row prefill tiling the speculator always uses; the
    interpreter's float32 matmul may sum a row differently with other rows beside it)."""
    args, _, _ = make_case([(70, 30), (3, 90)], HEADS["smollm2_gqa3_d64"], 16, torch.float32, seed=5)
    q, kc, vc, cu, ctx, bt, max_q = to_device(args)
    out = pa.paged_attention(q, kc, vc, cu, ctx, bt, max_q, window=window)
    ref = pa.paged_attention_ref(q, kc, vc, cu, ctx, bt, max_q, window=window,
                                 out=torch.empty(q.shape, dtype=torch.float32, device=DEVICE))
    torch.testing.assert_close(out, ref, **TOL[torch.float32])
    full = pa.paged_attention_ref(q, kc, vc, cu, ctx, bt, max_q)
    assert window >= 100 or not torch.allclose(ref, full)            # the window really cuts keys
    first = q[:70].contiguous()
    one = pa.paged_attention(first[-1:].contiguous(), kc, vc, torch.tensor([0, 1], dtype=torch.int32, device=DEVICE),
                             ctx[:1], bt[:1], 2, window=window)
    if DEVICE == "cuda":
        assert torch.equal(one[0], out[69])
    else:
        torch.testing.assert_close(one[0], out[69], atol=1e-6, rtol=1e-6)
