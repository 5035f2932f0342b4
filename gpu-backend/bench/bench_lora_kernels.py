"""LoRA shrink/expand kernels alone: BGMV (decode) and SGMV (prefill) at the 8B and SmolLM2 shapes.

    python bench/bench_lora_kernels.py [--out x.jsonl] [--compile-only]

Per case: T tokens over `n` distinct adapters of rank r on q|k|v (one fused launch), timed in a CUDA
graph (median). Bytes: each distinct adapter's A and B^T rows once (r * (K + N) * 2) plus x, y and the
read-modify-write of out; GB/s from that. --compile-only compiles every kernel variant the model
shapes use for sm_90 without a GPU (catches compile errors on the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

if not torch.cuda.is_available() and "--compile-only" not in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from reprise_gpu.config import get_model_args  # noqa: E402
from reprise_gpu.kernels import lora_expand as ex, lora_shrink as sh  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def compile_for_sm90() -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    def build(fn, const, types):
        sig = {}
        for arg in fn.arg_names:
            sig[arg] = "constexpr" if arg in const else types.get(arg, "i32")
        k = triton.compile(ASTSource(fn, sig, const), target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        print(f"sm_90 {fn.__name__} {const}: smem {k.metadata.shared} B", flush=True)

    ptrs = {"x_ptr": "*bf16", "pool_ptr": "*bf16", "out_ptr": "*bf16", "off_ptr": "*i32", "rank_ptr": "*i32",
            "slot_ptr": "*i32", "seg_start_ptr": "*i32", "seg_slot_ptr": "*i32", "y_ptr": "*fp32", "scale_ptr": "*fp32"}
    for name in ("smollm2-135m", "llama3-8b"):
        a = get_model_args(name)
        for K, mod0 in ((a.dim, 0), (a.q_size, 3), (a.dim, 4), (a.ffn_dim, 6)):
            build(sh._bgmv_shrink_kernel, dict(K=K, MOD0=mod0, BLOCK_R=sh.BLOCK_R, BLOCK_K=sh.BLOCK_K), ptrs)
            build(sh._sgmv_shrink_kernel, dict(K=K, MOD0=mod0, R_BLOCKS=sh.R_MAX // sh.BLOCK_R, BLOCK_M=sh.BLOCK_M,
                                               BLOCK_R=sh.BLOCK_R, BLOCK_K=sh.BLOCK_K, DOT_IN_F32=False,
                                               DOT_PRECISION="tf32"), ptrs)
            build(ex._bgmv_expand_kernel, dict(MOD0=mod0, BLOCK_R=sh.BLOCK_R, BLOCK_N=ex.BLOCK_N), ptrs)
            build(ex._sgmv_expand_kernel, dict(MOD0=mod0, N_BLOCKS=3, BLOCK_M=sh.BLOCK_M, BLOCK_R=sh.BLOCK_R,
                                               BLOCK_N=ex.BLOCK_N, DOT_IN_F32=False, DOT_PRECISION="tf32"), ptrs)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None)
    p.add_argument("--compile-only", action="store_true")
    p.add_argument("--dtype", default="bfloat16")
    a = p.parse_args()
    if a.compile_only:
        compile_for_sm90()
        return
    import triton.testing
    from test_lora_kernels import case, segments
    out = open(a.out, "a") if a.out else sys.stdout
    for name in ("llama3-8b", "smollm2-135m"):
        m = get_model_args(name)
        slices = ((0, m.q_size), (m.q_size, m.kv_size), (m.q_size + m.kv_size, m.kv_size))
        for T, kind in ((1, "identical"), (64, "distinct"), (256, "zipf"), (2048, "zipf")):
            x, pool, a_off, b_off, ranks, scaling, slots_np = case(kind, T, 2, torch.bfloat16, K=m.dim, slices=slices)
            slots = torch.tensor(slots_np, dtype=torch.int32, device="cuda")
            starts, seg_slots, max_len = segments(slots_np)
            y = sh.bgmv_shrink(x, pool, a_off, ranks, slots, 0, 3)
            o = torch.zeros(T, sum(n for _, n in slices), dtype=torch.bfloat16, device="cuda")
            fns = {"bgmv": lambda: ex.bgmv_expand(o, sh.bgmv_shrink(x, pool, a_off, ranks, slots, 0, 3), pool, b_off,
                                                  ranks, scaling, slots, 0, slices),
                   "sgmv": lambda: ex.sgmv_expand(o, sh.sgmv_shrink(x, pool, a_off, ranks, starts, seg_slots, max_len,
                                                                    0, 3), pool, b_off, ranks, scaling, starts,
                                                  seg_slots, max_len, 0, slices)}
            used = sorted({int(s) for s in slots_np if s >= 0})
            nbytes = sum(int(ranks[s, i]) * (m.dim + n) * 2 for s in used for i, (_, n) in enumerate(slices))
            nbytes += T * (m.dim * 2 + o.shape[1] * 4)
            for k, f in fns.items():
                f()
                us = triton.testing.do_bench_cudagraph(f, rep=50, return_mode="median") * 1e3
                row = dict(bench="lora_kernels", model=name, tokens=T, kind=kind, kernel=k, us=us, bytes=nbytes,
                           gb_per_s=nbytes / us / 1e3, adapters=len(used))
                print(json.dumps(row), flush=True)
                out.write(json.dumps(row) + "\n")
    del y


if __name__ == "__main__":
    main()
