"""Check, on the GPU, that every op of the speculator gives a row the same bits whatever else is in the batch.

    python -m reprise_gpu.speculator.check_invariance --model smollm2-135m --out inv.json
    python -m reprise_gpu.speculator.check_invariance --model llama3-8b --layers 2

For each op at the model's shapes, rows are computed alone (M = 1) and inside batches of M rows at
several positions; then attention (chunk of queries vs the whole prefill vs a mixed batch); then the
whole speculator (alone, batched with other sequences, split into prefill chunks). Prints one line per
check and a JSON report; exit status 1 if any row differs. Also runs (slowly) on the CPU with the CUDA
path in the Triton interpreter (`--device cpu`), which checks the plumbing, not the hardware.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import triton

from ..config import get_model_args
from ..gguf_loader import random_state_dict
from . import cuda_ops
from .model import SeqInput, Speculator
from .quantize import create_quantized_state_dict, quantize_rows
from .recipe import get_recipe

BATCHES = (1, 2, 7, 64, 133, 1024, 4096, 16384)


def _rows_invariant(fn, make, m_values, probe=(0, 1, 5)) -> list[str]:
    """fn(X[M, ...]) -> [M, ...]; checks rows `probe` of every batch against the same rows computed alone."""
    bad = []
    big = make(max(m_values))
    alone = {i: fn(big[i:i + 1]) for i in probe}
    for m in m_values:
        for off in (0, max(0, max(m_values) - m)):
            out = fn(big[off:off + m])
            for i in probe:
                j = i - off
                if 0 <= j < m and not all(torch.equal(a[j:j + 1], b) for a, b in zip(_tup(out), _tup(alone[i]))):
                    bad.append(f"M={m} offset={off} row={i}")
    return bad


def _tup(x):
    if isinstance(x, tuple):
        return tuple(t for item in x for t in (_tup(item) if isinstance(item, tuple) else (item,)) if t is not None)
    return (x,)


def op_checks(args, device, m_values) -> dict[str, list[str]]:
    g = torch.Generator(device=device).manual_seed(0)
    rnd = lambda m, k: torch.randn(m, k, generator=g, device=device) * 3  # noqa: E731
    gain = torch.rand(args.dim, generator=g, device=device) + 0.5
    res = {
        f"norm_quant split dim={args.dim}": _rows_invariant(lambda x: cuda_ops.norm_quant(x, gain, 1e-5, True),
                                                           lambda m: rnd(m, args.dim), m_values),
        f"silu_mul_quant F={args.ffn_dim}": _rows_invariant(lambda x: cuda_ops.silu_mul_quant(x, args.ffn_dim),
                                                           lambda m: rnd(m, 2 * args.ffn_dim).bfloat16(), m_values),
        f"quant_rows K={args.q_size}": _rows_invariant(cuda_ops.quant_rows, lambda m: rnd(m, args.q_size).bfloat16(),
                                                      m_values),
    }
    cs = torch.rand(1, args.head_dim, generator=g, device=device)     # one position for every row
    res[f"rope H={args.n_heads} D={args.head_dim}"] = _rows_invariant(
        lambda x: cuda_ops.rope(x, cs.expand(x.shape[0], -1).contiguous(), out_dtype=torch.bfloat16),
        lambda m: rnd(m, args.q_size).view(m, args.n_heads, args.head_dim), m_values)
    shapes = {"q": (args.q_size, args.dim), "kv": (2 * args.kv_size, args.dim), "o": (args.dim, args.q_size),
              "gate_up": (2 * args.ffn_dim, args.dim), "down": (args.dim, args.ffn_dim), "corr": (args.dim, 2 * args.kv_size)}
    for name, (n, k) in shapes.items():
        wc, ws = quantize_rows(torch.randn(n, k, generator=g, device=device))
        for wide in ((False, True) if name == "gate_up" else (False,)):
            for fast in (False, True):
                res[f"linear {name} N={n} K={k} wide={wide}" + (" fast_accum" if fast else "")] = _rows_invariant(
                    lambda x: cuda_ops.linear(cuda_ops.quant_rows(x), wc, ws, wide=wide, fast=fast),
                    lambda m: rnd(m, k), m_values)
    return res


def model_checks(args, device, lengths=(1, 37, 300, 2048), recipe: str = "w8a8-kvx") -> dict[str, list[str]]:
    sd = random_state_dict(args, seed=0, device=device)
    sw = create_quantized_state_dict(sd, args, get_recipe(recipe), device=device)
    spec = Speculator(sw, device=device, ops="cuda")
    g = torch.Generator(device=device).manual_seed(1)
    n = max(lengths)
    ids = torch.randint(0, args.vocab_size, (n,), generator=g, device=device)
    exact = (torch.randn(args.n_layers, 2, args.n_kv_heads, n, args.head_dim, generator=g, device=device)
             .bfloat16().float())
    alone = spec.predict_all([SeqInput(ids, 0)], [exact])[0]
    res = {f"speculator {recipe} batched": [], f"speculator {recipe} chunked": []}
    for other in lengths:
        ids2 = torch.randint(0, args.vocab_size, (other,), generator=g, device=device)
        ex2 = exact[:, :, :, :other].flip(0)
        out = spec.predict_all([SeqInput(ids2, 0), SeqInput(ids, 0), SeqInput(ids2, 0)], [ex2, exact, ex2])
        if not torch.equal(out[1], alone):
            res[f"speculator {recipe} batched"].append(f"with two sequences of {other}")
    for cut in lengths[:-1]:
        head = spec.predict_all([SeqInput(ids[:cut], 0)], [exact[:, :, :, :cut]])[0]
        tail = spec.predict_all([SeqInput(ids[cut:], cut, exact[:, :, :, :cut])], [exact[:, :, :, cut:]])[0]
        if not torch.equal(torch.cat([head, tail], dim=3), alone):
            res[f"speculator {recipe} chunked"].append(f"cut at {cut}")
    return res


def compile_for_sm90() -> int:
    """Compile every speculator kernel for sm_90 (H200) with no GPU: catches compile errors early."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import kernels as K

    def build(fn, const, types, floats=()):
        sig, attrs = {}, {}
        for i, arg in enumerate(fn.arg_names):
            if arg in const:
                sig[arg] = "constexpr"
            elif arg.endswith("_ptr"):
                sig[arg] = "*" + types.get(arg, "fp32")
                attrs[(i,)] = [["tt.divisibility", 16]]
            else:
                sig[arg] = "fp32" if arg in floats else "i32"
        k = triton.compile(ASTSource(fn, sig, const, attrs), target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": K.NUM_WARPS})
        print(f"sm_90 {fn.__name__} {const}: smem {k.metadata.shared} B", flush=True)

    n = 0
    for split in (False, True):
        build(K._norm_quant_kernel, dict(SPLIT=split, BLOCK=K.BLOCK), {"codes_ptr": "fp8e4nv", "dcodes_ptr": "fp8e4nv"},
              floats=("eps",))
        n += 1
    for elt in ("bf16", "fp32"):
        build(K._silu_mul_quant_kernel, dict(BLOCK=K.BLOCK), {"gu_ptr": elt, "codes_ptr": "fp8e4nv"})
        build(K._quant_rows_kernel, dict(BLOCK=K.BLOCK), {"x_ptr": elt, "codes_ptr": "fp8e4nv"})
        n += 2
    for inverse in (False, True):
        for elt in ("bf16", "fp32"):
            build(K._rope_kernel, dict(HALF=64, BLOCK_H=16, INVERSE=inverse), {"x_ptr": "fp32", "out_ptr": elt})
            n += 1
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layers", type=int, default=2, help="decoder layers for the whole-model check")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--max-batch", type=int, default=16384)
    ap.add_argument("--out", default=None)
    ap.add_argument("--recipes", nargs="+", default=["w8a8-kvx"], help="whole-speculator checks per recipe")
    ap.add_argument("--compile-only", action="store_true", help="compile the kernels for sm_90 and stop (no GPU)")
    a = ap.parse_args(argv)
    if a.compile_only:
        print(f"compiled {compile_for_sm90()} kernels")
        return 0
    device = torch.device(a.device)
    cuda_ops.setup(device)
    args = get_model_args(a.model)
    m_values = [m for m in BATCHES if m <= a.max_batch]
    t0 = time.time()
    report = {"model": a.model, "device": cuda_ops.backend_name(device), "checks": {}}
    report["checks"].update(op_checks(args, device, m_values))
    small = get_model_args(a.model, n_layers=a.layers)
    for rec in a.recipes:
        report["checks"].update(model_checks(small, device, recipe=rec,
                                             lengths=(1, 37, 300, 2048) if device.type == "cuda" else (1, 9, 20)))
    failed = {k: v for k, v in report["checks"].items() if v}
    for k, v in report["checks"].items():
        print(f"{'OK  ' if not v else 'FAIL'} {k}" + (f": {v[:4]}" if v else ""))
    report["ok"] = not failed
    report["seconds"] = round(time.time() - t0, 1)
    print(json.dumps({"ok": report["ok"], "failed": list(failed), "seconds": report["seconds"]}))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
