"""Benchmark the fused decode kernels against the PyTorch sequences they replace, on one GPU.

    python bench/bench_fused_ops.py [--out results.jsonl] [--dtype bfloat16] [--compile-only]

Per op (add_rms_norm, rope_store_kv, silu_mul), model shape (smollm2-135m, llama3-8b) and batch of
decode tokens T in {1, 16, 64, 256}: the Triton kernel and its reference, each replayed in a CUDA graph
(triton.testing.do_bench_cudagraph, median), i.e. the per-layer cost inside the decode graph. Bytes:

    add_rms_norm   read x, residual, w; write out, residual:   (4 T N + N) * itemsize
    rope_store_kv  read q, k, v, cos, sin; write q, k, K, V:   (2 T (H + KH) D + 3 T KH D) * itemsize + T D * 4
    silu_mul       read 2 T F, write T F:                       3 T F * itemsize

One JSON line per case goes to --out (default $OUT/bench_fused_ops.jsonl, else stdout).
--compile-only compiles every kernel for sm_90 (H200) at these shapes with no GPU (catches compile errors).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch

if not torch.cuda.is_available() and "--compile-only" not in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # must precede triton's first import

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from reprise_gpu.config import get_model_args  # noqa: E402
from reprise_gpu.kernels import rmsnorm, rope_kv, silu_mul  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
MODELS = ("smollm2-135m", "llama3-8b")
BATCHES = (1, 16, 64, 256)
BLOCK = 16


def make(op: str, args, T: int, dtype, device):
    """(kernel thunk, reference thunk, bytes moved, tensors the thunks write in place) for one op at T tokens."""
    g = torch.Generator(device=device).manual_seed(0)
    rnd = lambda *s, dt=dtype: torch.randn(*s, generator=g, device=device).to(dt)  # noqa: E731
    N, H, KH, D, F = args.dim, args.n_heads, args.n_kv_heads, args.head_dim, args.ffn_dim
    it = dtype.itemsize
    if op == "add_rms_norm":
        x, r, w = rnd(T, N), rnd(T, N), rnd(N)
        return (lambda: rmsnorm.add_rms_norm(x, r, w, 1e-5), lambda: rmsnorm.add_rms_norm_ref(x, r, w, 1e-5),
                (4 * T * N + N) * it, [])
    if op == "rope_store_kv":
        qkv = rnd(T, (H + 2 * KH) * D)
        q, k, v = (t.view(T, -1, D) for t in qkv.split([H * D, KH * D, KH * D], dim=-1))
        cos, sin = rnd(T, 1, D, dt=torch.float32).chunk(2, dim=-1)
        cache = torch.zeros(2, -(-T // BLOCK) + 1, BLOCK, KH, D, dtype=dtype, device=device)
        slots = torch.arange(BLOCK, BLOCK + T, device=device)
        a = (q, k, v, cos, sin, cache[0], cache[1], slots)
        return (lambda: rope_kv.rope_store_kv(*a), lambda: rope_kv.rope_store_kv_ref(*a),
                (2 * T * (H + KH) * D + 3 * T * KH * D) * it + T * D * 4, [qkv, cache])
    x = rnd(T, 2 * F)
    return lambda: silu_mul.silu_mul(x), lambda: silu_mul.silu_mul_ref(x), 3 * T * F * it, []


OPS = ("add_rms_norm", "rope_store_kv", "silu_mul")


def compile_for_sm90(dtype) -> None:
    """Compile each kernel for sm_90 at every model shape, with the launchers' constexprs."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    elt = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]

    def build(fn, const, ptr_types, floats=(), num_warps=4):
        sig, attrs = {}, {}
        for i, arg in enumerate(fn.arg_names):
            if arg in const:
                sig[arg] = "constexpr"
            elif arg.endswith("_ptr"):
                sig[arg] = "*" + ptr_types.get(arg, elt)
                attrs[(i,)] = [["tt.divisibility", 16]]
            else:
                sig[arg] = "fp32" if arg in floats else "i32"
        k = triton.compile(ASTSource(fn, sig, const, attrs), target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": num_warps})
        print(f"sm_90 {fn.__name__} {elt} {const}: smem {k.metadata.shared} B", flush=True)

    for name in MODELS:
        a = get_model_args(name)
        for has_res in (False, True):
            bn = triton.next_power_of_2(a.dim)
            build(rmsnorm._rms_norm_kernel, dict(HAS_RESIDUAL=has_res, BLOCK_N=bn), {}, floats=("eps",),
                  num_warps=rmsnorm._num_warps(bn))
        bh, bhalf = triton.next_power_of_2(a.n_heads), triton.next_power_of_2(a.head_dim // 2)
        build(rope_kv._rope_store_kv_kernel,
              dict(H=a.n_heads, KH=a.n_kv_heads, HALF=a.head_dim // 2, PAGE=BLOCK, BLOCK_H=bh,
                   BLOCK_KH=triton.next_power_of_2(a.n_kv_heads), BLOCK_HALF=bhalf),
              {"cos_ptr": "fp32", "sin_ptr": "fp32", "slot_ptr": "i64"})
        build(silu_mul._silu_mul_kernel, dict(BLOCK_F=silu_mul.BLOCK_F), {}, num_warps=8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="JSONL path (default $OUT/bench_fused_ops.jsonl, else stdout)")
    p.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    p.add_argument("--compile-only", action="store_true")
    a = p.parse_args()
    dtype = DTYPES[a.dtype]
    if a.compile_only:
        compile_for_sm90(dtype)
        return
    import triton
    import triton.testing

    device = "cuda" if torch.cuda.is_available() else "cpu"
    for name in MODELS:  # correctness first, small and everywhere (fresh, identical inputs per side)
        for op in OPS:
            fused, _, _, state = make(op, get_model_args(name), 3, torch.float32, device)
            _, ref, _, ref_state = make(op, get_model_args(name), 3, torch.float32, device)
            for x, y in zip(state + [fused()], ref_state + [ref()]):
                torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)
    if device == "cpu":
        print("no CUDA device: correctness check only")
        return
    path = a.out or (os.path.join(os.environ["OUT"], "bench_fused_ops.jsonl") if os.environ.get("OUT") else None)
    out = open(path, "a") if path else sys.stdout
    meta = dict(dtype=a.dtype, device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    try:
        for name in MODELS:
            for op in OPS:
                for T in BATCHES:
                    fused, ref, nbytes, _ = make(op, get_model_args(name), T, dtype, device)
                    fused(), ref()  # compile before capture
                    us = {k: triton.testing.do_bench_cudagraph(f, rep=100, return_mode="median") * 1e3
                          for k, f in (("fused", fused), ("reference", ref))}
                    row = dict(bench="fused_op", op=op, model=name, tokens=T, us_fused=us["fused"],
                               us_reference=us["reference"], gb_per_s_fused=nbytes / us["fused"] / 1e3,
                               bytes=nbytes, **meta)
                    print(f"{op:14s} {name:13s} T={T:4d}  fused {us['fused']:7.1f} us  ref {us['reference']:7.1f} us"
                          f"  {row['gb_per_s_fused']:7.1f} GB/s", flush=True)
                    out.write(json.dumps(row) + "\n")
    finally:
        if path:
            out.close()


if __name__ == "__main__":
    main()
