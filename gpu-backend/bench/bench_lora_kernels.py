"""LoRA shrink+expand kernels alone, old vs new, at the 8B and SmolLM2 shapes (q|k|v: one fused launch each).

    python bench/bench_lora_kernels.py [--out x.jsonl] [--tokens 1,16,64,128,256] [--compile-only]

Kernels: bgmv (one token per program, lora_shrink.py / lora_expand.py), sgmv (prefill segments),
tiles (sorted token tiles + split-K shrink, kernels/lora_tiles.py, the decode default), tiles-nosplit
(the same tiles with the whole K walk in one program: what split-K alone buys), tiles-k8 (8 K steps per
program: half the splits). Batches: identical (every token on one adapter), distinct (each token its own
adapter), zipf (Zipf(1) popularity over 1024 adapters, as bench_lora.py). Ranks cycle through
8, 16, 32, 64, 128 by adapter. Each case is timed in a CUDA graph (median); the tile table is built
outside the timing (the runner builds it on the host while the previous step runs). Bytes: each distinct
adapter's A and B^T rows once, plus x and the read-modify-write of out; GB/s from that.
--compile-only compiles every kernel variant the model shapes use for sm_90 without a GPU. Without a
GPU (and without --compile-only) it runs the same cases at the tiny shape in Triton's interpreter, checks
each kernel against bgmv and times nothing: a smoke run of this script.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

if not torch.cuda.is_available() and "--compile-only" not in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from reprise_gpu.config import get_model_args  # noqa: E402
from reprise_gpu.kernels import lora_expand as ex, lora_shrink as sh, lora_tiles as lt  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

DEV = "cuda" if torch.cuda.is_available() else "cpu"
RANKS = (8, 16, 32, 64, 128)
N_MODULES = 7


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
            "slot_ptr": "*i32", "seg_start_ptr": "*i32", "seg_slot_ptr": "*i32", "y_ptr": "*fp32", "scale_ptr": "*fp32",
            "order_ptr": "*i32", "tile_ptr": "*i32", "yp_ptr": "*fp32"}
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
            for k_iters in (4, 8, triton.cdiv(K, lt.TILE_K)):
                build(lt._tile_shrink_kernel, dict(K=K, MOD0=mod0, R_BLOCKS=sh.R_MAX // lt.TILE_R, BLOCK_M=lt.TILE_M,
                                                   BLOCK_R=lt.TILE_R, BLOCK_K=lt.TILE_K, K_ITERS=k_iters,
                                                   DOT_IN_F32=False, DOT_PRECISION="tf32"), ptrs)
            for split in sorted({triton.cdiv(K, lt.TILE_K * k) for k in (4, 8)} | {1}):
                build(lt._tile_expand_kernel, dict(MOD0=mod0, SPLIT=split, BLOCK_M=lt.TILE_M, BLOCK_R=lt.EXP_R,
                                                   BLOCK_N=lt.EXP_N, DOT_IN_F32=False, DOT_PRECISION="tf32"), ptrs)


def batch_slots(kind: str, T: int, rng) -> np.ndarray:
    """Adapter ids per token: identical, distinct, or Zipf(1) over 1024 adapters."""
    if kind == "identical":
        return np.zeros(T, dtype=np.int64)
    if kind == "distinct":
        return np.arange(T)
    p = 1.0 / np.arange(1, 1025)
    return rng.choice(1024, size=T, p=p / p.sum())


def gpu_case(K: int, slices, ids: np.ndarray, seed: int = 0):
    """Pool, tables and x on the GPU for the distinct adapters in `ids` (renumbered to slots 0..U-1)."""
    used, slots_np = np.unique(ids, return_inverse=True)
    U, width = len(used), max(K, max(n for _, n in slices))
    ranks = np.zeros((U, N_MODULES), dtype=np.int32)
    ranks[:, :len(slices)] = [[RANKS[int(u) % len(RANKS)]] * len(slices) for u in used]
    n_rows = 2 * int(ranks.sum())
    g = torch.Generator(device=DEV).manual_seed(seed)
    pool = (torch.randn(n_rows * width, generator=g, device=DEV) * 0.05).to(torch.bfloat16)
    a_off = np.zeros((U, N_MODULES, sh.R_MAX), dtype=np.int32)
    b_off = np.zeros_like(a_off)
    row = 0
    for s in range(U):
        for m in range(len(slices)):
            r = ranks[s, m]
            a_off[s, m, :r] = (row + np.arange(r)) * width
            b_off[s, m, :r] = (row + r + np.arange(r)) * width
            row += 2 * r
    t = lambda v: torch.from_numpy(v).to(DEV)  # noqa: E731
    x = torch.randn(len(ids), K, generator=g, device=DEV).to(torch.bfloat16)
    scaling = torch.full((U,), 2.0, device=DEV)
    nbytes = sum(int(ranks[s, i]) * (K + n) * 2 for s in range(U) for i, (_, n) in enumerate(slices))
    return x, pool, t(a_off), t(b_off), t(ranks), scaling, slots_np.astype(np.int32), nbytes


def empty_projections(rep: int, out) -> list[dict]:
    """The MLP's LoRA launches when no adapter targets it (bench_lora.py's q,k,v,o adapters): every program
    exits on rank 0, but the grids still cover T tiles (or tokens) x splits x blocks. 8B shape, T = 128."""
    import triton.testing
    m, T, rows = get_model_args("llama3-8b"), 128, []
    slots_np = np.zeros(T, dtype=np.int32)
    slots = torch.from_numpy(slots_np).to(DEV)
    order, tiles = (torch.from_numpy(v).to(DEV) for v in lt.build_tiles(slots_np))
    ranks = torch.zeros(1, N_MODULES, dtype=torch.int32, device=DEV)
    offs = torch.zeros(1, N_MODULES, sh.R_MAX, dtype=torch.int32, device=DEV)
    pool, scaling = torch.zeros(16, dtype=torch.bfloat16, device=DEV), torch.ones(1, device=DEV)
    for proj, K, mod0, slices in (("gate_up", m.dim, 4, ((0, m.ffn_dim), (m.ffn_dim, m.ffn_dim))),
                                  ("down", m.ffn_dim, 6, ((0, m.dim),))):
        x = torch.zeros(T, K, dtype=torch.bfloat16, device=DEV)
        o = torch.zeros(T, sum(n for _, n in slices), dtype=torch.bfloat16, device=DEV)
        n = len(slices)
        fns = {"bgmv": lambda: ex.bgmv_expand(o, sh.bgmv_shrink(x, pool, offs, ranks, slots, mod0, n), pool, offs,
                                              ranks, scaling, slots, mod0, slices),
               "tiles": lambda: lt.tile_expand(o, lt.tile_shrink(x, pool, offs, ranks, order, tiles, mod0, n), pool,
                                               offs, ranks, scaling, order, tiles, mod0, slices)}
        for k, f in fns.items():
            f()
            us = triton.testing.do_bench_cudagraph(f, rep=rep, return_mode="median") * 1e3
            row = dict(bench="lora_kernels_empty", model="llama3-8b", tokens=T, proj=proj, kernel=k, us=us)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if out:
                out.write(json.dumps(row) + "\n")
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None)
    p.add_argument("--tokens", default="1,16,64,128,256")
    p.add_argument("--kinds", default="identical,distinct,zipf")
    p.add_argument("--rep", type=int, default=10, help="ms per graph replay (10 replays per timing)")
    p.add_argument("--compile-only", action="store_true")
    a = p.parse_args()
    if a.compile_only:
        compile_for_sm90()
        return
    import triton
    import triton.testing
    from test_lora_kernels import segments
    out = open(a.out, "a") if a.out else None
    smoke = DEV == "cpu"
    if smoke:
        a.tokens = "1,3"
    rows = [] if smoke else empty_projections(a.rep, out)      # first: small, and not lost to a time limit
    for name in ("tiny",) if smoke else ("llama3-8b", "smollm2-135m"):
        m = get_model_args(name)
        slices = ((0, m.q_size), (m.q_size, m.kv_size), (m.q_size + m.kv_size, m.kv_size))
        N = sum(n for _, n in slices)
        for kind in a.kinds.split(","):
            for T in (int(v) for v in a.tokens.split(",")):
                x, pool, a_off, b_off, ranks, scaling, slots_np, nbytes = gpu_case(
                    m.dim, slices, batch_slots(kind, T, np.random.default_rng(T)))
                slots = torch.from_numpy(slots_np).to(DEV)
                starts, seg_slots, max_len = segments(slots_np)
                order, tiles = (torch.from_numpy(v).to(DEV) for v in lt.build_tiles(slots_np))
                o = torch.zeros(T, N, dtype=torch.bfloat16, device=DEV)
                nbytes += T * (m.dim * 2 + N * 4)

                def tiles_fn(k_iters):
                    def f():
                        lt.K_ITERS = k_iters
                        yp = lt.tile_shrink(x, pool, a_off, ranks, order, tiles, 0, 3)
                        lt.tile_expand(o, yp, pool, b_off, ranks, scaling, order, tiles, 0, slices)
                    return f
                fns = {"bgmv": lambda: ex.bgmv_expand(o, sh.bgmv_shrink(x, pool, a_off, ranks, slots, 0, 3), pool,
                                                      b_off, ranks, scaling, slots, 0, slices),
                       "sgmv": lambda: ex.sgmv_expand(o, sh.sgmv_shrink(x, pool, a_off, ranks, starts, seg_slots,
                                                                        max_len, 0, 3), pool, b_off, ranks, scaling,
                                                      starts, seg_slots, max_len, 0, slices),
                       "tiles": tiles_fn(None), "tiles-k4": tiles_fn(4),
                       "tiles-nosplit": tiles_fn(triton.cdiv(m.dim, lt.TILE_K)), "tiles-k8": tiles_fn(8)}
                # the new kernels against the old (bgmv) on this very case, before timing anything
                ref = torch.zeros_like(o)
                ex.bgmv_expand(ref, sh.bgmv_shrink(x, pool, a_off, ranks, slots, 0, 3), pool, b_off, ranks, scaling,
                               slots, 0, slices)
                for k, f in fns.items():
                    o.zero_()
                    f()
                    err = (o.float() - ref.float()).abs().max().item() / max(ref.float().abs().max().item(), 1e-6)
                    o.zero_()
                    if smoke:
                        assert err < 0.02, (name, kind, T, k, err)
                        print(name, kind, T, k, f"rel err vs bgmv {err:.2e}, max |out| {ref.float().abs().max().item():.3g}")
                        continue
                    us = triton.testing.do_bench_cudagraph(f, rep=a.rep, return_mode="median") * 1e3
                    row = dict(bench="lora_kernels", model=name, tokens=T, kind=kind, kernel=k, us=us, bytes=nbytes,
                               gb_per_s=nbytes / us / 1e3, adapters=int(slots_np.max()) + 1, rel_err_vs_bgmv=err)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if out:
                        out.write(json.dumps(row) + "\n")
                lt.K_ITERS = None
    print(f"\n{'model':14s} {'kind':9s} {'T':>4s} " + " ".join(f"{k:>13s}" for k in fns) + "   (us)")
    for r in rows:
        if r["bench"] == "lora_kernels_empty":
            print(f"no adapter on {r['proj']} (8B, T=128): {r['kernel']} {r['us']:.1f} us")
    rows = [r for r in rows if r["bench"] == "lora_kernels"]
    for key in sorted({(r["model"], r["kind"], r["tokens"]) for r in rows}, key=lambda k: (k[0], k[1], k[2])):
        us = {r["kernel"]: r["us"] for r in rows if (r["model"], r["kind"], r["tokens"]) == key}
        print(f"{key[0]:14s} {key[1]:9s} {key[2]:4d} " + " ".join(f"{us.get(k, float('nan')):13.1f}" for k in fns))


if __name__ == "__main__":
    main()
