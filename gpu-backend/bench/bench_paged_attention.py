"""Benchmark the Triton paged-attention kernel (decode and chunked prefill) on one GPU.

    python bench/bench_paged_attention.py [--out results.jsonl] [--dtype bfloat16] [--check-only | --compile-only]

First checks the kernel against `paged_attention_ref` on small cases (on a machine without CUDA this
is the only part that runs, through the Triton interpreter). Then, per case, times the kernel
(triton.testing.do_bench: warm-up, then the median of repeated runs, L2 flushed between them) and, for
decode, the kernel replayed in a CUDA graph, and reports the achieved bandwidth:

    bytes = sum_b ctx_b * KH * D * 2 (K and V) * itemsize     # every K/V row of every sequence read once
          + 2 * T * H * D * itemsize                           # q read, out written
          + B * max_blocks * 4                                 # block table

Prefill re-reads K/V once per query tile, so its GB/s is a lower bound on traffic; TFLOP/s is also
reported there (4 * sum_b n_b * (p_b + n_b / 2) * H * D flops, the causal half of QK^T and PV).
One JSON line per case goes to --out (default $OUT/bench_paged_attention.jsonl, else stdout).

--compile-only compiles the kernel for sm_90 (H200) as the JIT would for the benchmark shapes, with no
GPU needed: it catches compile errors and shared-memory overflow before a GPU run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys

import torch

if not torch.cuda.is_available() and "--compile-only" not in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # must precede triton's first import

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from reprise_gpu.kernels import paged_attention as pa  # noqa: E402
from reprise_gpu.kernels.paged_attention import BLOCK_N, paged_attention, paged_attention_ref  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
SHAPES = {"smollm2-135m": (9, 3, 64), "llama3-8b": (32, 8, 128)}  # (H, KH, D)


def make_inputs(new_lens, ctx_lens, heads, block_size, dtype, device, seed=0):
    """Random q and caches; each sequence's pages are scattered through the pool, as after churn."""
    g = torch.Generator(device=device).manual_seed(seed)
    H, KH, D = heads
    pages = [math.ceil(c / block_size) for c in ctx_lens]
    num_blocks = sum(pages) + 1
    perm = torch.randperm(num_blocks, generator=g, device=device).to(torch.int32)
    bt = torch.zeros(len(pages), max(pages), dtype=torch.int32, device=device)
    i = 0
    for b, n in enumerate(pages):
        bt[b, :n] = perm[i:i + n]
        i += n
    k_cache = torch.randn(num_blocks, block_size, KH, D, generator=g, device=device).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, KH, D, generator=g, device=device).to(dtype)
    q = torch.randn(sum(new_lens), H, D, generator=g, device=device).to(dtype)
    cu = torch.tensor([0] + list(torch.tensor(new_lens).cumsum(0).tolist()), dtype=torch.int32, device=device)
    ctx = torch.tensor(ctx_lens, dtype=torch.int32, device=device)
    return q, k_cache, v_cache, cu, ctx, bt, max(new_lens)


def check(dtype, device) -> float:
    """Max abs error of the kernel vs the float32 reference over a few small mixed cases."""
    worst = 0.0
    for name, heads in SHAPES.items():
        for new, ctx in [([1, 1, 1], [1, 70, 300]), ([133], [133]), ([1, 37, 16], [90, 60, 16])]:
            args = make_inputs(new, ctx, heads, 16, dtype, device)
            err = (paged_attention(*args).float() - paged_attention_ref(*args).float()).abs().max().item()
            worst = max(worst, err)
            print(f"check {name} new={new} ctx={ctx}: max abs err {err:.2e}", flush=True)
    tol = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    if worst > tol:
        raise SystemExit(f"kernel differs from the reference by {worst} > {tol}")
    return worst


def compile_for_sm90(dtype, block_size=16, max_blocks=512):
    """Compile every (shape, decode/prefill) variant for sm_90 with the JIT's specializations; print smem."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = pa._paged_attention_kernel
    assert isinstance(fn, triton.runtime.JITFunction), "unset TRITON_INTERPRET for --compile-only"
    elt = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    for name, (H, KH, D) in SHAPES.items():
        for max_q in (1, 512):
            block_q, group_p2 = pa._tiles(H // KH, max_q)
            ints = dict(stride_qt=H * D, stride_qh=D, stride_kb=block_size * KH * D, stride_ks=KH * D,
                        stride_kh=D, stride_vb=block_size * KH * D, stride_vs=KH * D, stride_vh=D,
                        stride_ot=H * D, stride_oh=D, stride_bt=max_blocks, window=0)
            const = dict(GROUP=H // KH, GROUP_P2=group_p2, HEAD_DIM=D, BLOCK_D=max(16, triton.next_power_of_2(D)),
                         PAGE=block_size, BLOCK_Q=block_q, BLOCK_N=BLOCK_N,
                         DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32", WHILE_LOOP=False,
                         DOT_IN_F32=False)
            sig, attrs = {}, {}
            for i, arg in enumerate(fn.arg_names):
                if arg in const:
                    sig[arg] = "constexpr"
                elif arg.endswith("_ptr"):
                    sig[arg] = "*i32" if arg in ("cu_seqlens_q_ptr", "context_lens_ptr", "block_tables_ptr") \
                        else "*" + elt
                    attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
                elif arg == "scale_log2":
                    sig[arg] = "fp32"
                else:
                    sig[arg] = "i32"
                    if ints[arg] % 16 == 0:
                        attrs[(i,)] = [["tt.divisibility", 16]]
            kernel = triton.compile(ASTSource(fn, sig, const, attrs), target=GPUTarget("cuda", 90, 32),
                                    options={"num_warps": pa.NUM_WARPS, "num_stages": pa.NUM_STAGES})
            smem = kernel.metadata.shared
            print(f"sm_90 {name} {elt} max_seqlen_q={max_q}: BLOCK_Q={block_q} smem {smem} B", flush=True)
            assert smem <= 227 * 1024, f"{smem} B of shared memory exceeds the H200's 227 KiB"


def bytes_moved(new_lens, ctx_lens, heads, itemsize, max_blocks):
    H, KH, D = heads
    return sum(ctx_lens) * KH * D * 2 * itemsize + 2 * sum(new_lens) * H * D * itemsize + len(ctx_lens) * max_blocks * 4


def cases():
    for shape in SHAPES:
        for batch in (1, 16, 64, 256):
            for ctx in (512, 2048, 8192):
                if batch * ctx <= 256 * 8192:
                    yield dict(kind="decode", shape=shape, new_lens=[1] * batch, ctx_lens=[ctx] * batch)
        for chunk, past, batch in ((512, 0, 1), (512, 3584, 1), (512, 0, 8), (128, 1920, 16)):
            yield dict(kind="prefill", shape=shape, new_lens=[chunk] * batch, ctx_lens=[past + chunk] * batch)


def bench(case, dtype, block_size, out):
    import triton.testing

    heads = SHAPES[case["shape"]]
    args = make_inputs(case["new_lens"], case["ctx_lens"], heads, block_size, dtype, "cuda")
    res = torch.empty_like(args[0])
    fn = lambda: paged_attention(*args, out=res)  # noqa: E731
    ms = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
    ms_graph = None
    if case["kind"] == "decode":
        fn()  # compiled before capture
        ms_graph = triton.testing.do_bench_cudagraph(fn, rep=200, return_mode="median")
    nbytes = bytes_moved(case["new_lens"], case["ctx_lens"], heads, dtype.itemsize, args[5].shape[1])
    H, _, D = heads
    flops = sum(4 * n * (c - n + n / 2) * H * D for n, c in zip(case["new_lens"], case["ctx_lens"]))
    best = min(ms, ms_graph) if ms_graph else ms
    row = dict(bench="paged_attention", kind=case["kind"], shape=case["shape"], heads=heads,
               batch=len(case["new_lens"]), new_tokens=case["new_lens"][0], context=case["ctx_lens"][0],
               block_size=block_size, block_n=BLOCK_N, dtype=str(dtype).removeprefix("torch."),
               ms=ms, ms_cuda_graph=ms_graph, bytes=nbytes, gb_per_s=nbytes / best / 1e6,
               tflop_per_s=flops / best / 1e9, device=torch.cuda.get_device_name(),
               torch=torch.__version__, triton=triton.__version__,
               date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    print(f"{row['kind']:8s} {row['shape']:13s} B={row['batch']:4d} n={row['new_tokens']:4d} ctx={row['context']:5d}"
          f"  {ms * 1e3:9.1f} us" + (f" (graph {ms_graph * 1e3:9.1f} us)" if ms_graph else "")
          + f"  {row['gb_per_s']:8.1f} GB/s  {row['tflop_per_s']:7.2f} TFLOP/s", flush=True)
    out.write(json.dumps(row) + "\n")
    out.flush()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="JSONL path (default $OUT/bench_paged_attention.jsonl, else stdout)")
    p.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--check-only", action="store_true")
    p.add_argument("--compile-only", action="store_true")
    a = p.parse_args()
    dtype = DTYPES[a.dtype]
    if a.compile_only:
        compile_for_sm90(dtype, a.block_size)
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    check(dtype, device)
    if a.check_only or device == "cpu":
        print("no CUDA device: correctness check only" if device == "cpu" else "check only")
        return
    path = a.out or (os.path.join(os.environ["OUT"], "bench_paged_attention.jsonl") if os.environ.get("OUT") else None)
    out = open(path, "a") if path else sys.stdout
    try:
        for case in cases():
            bench(case, dtype, a.block_size, out)
    finally:
        if path:
            out.close()


if __name__ == "__main__":
    main()
