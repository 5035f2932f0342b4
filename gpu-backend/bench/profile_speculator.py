"""Where the FP8 speculator's prefill time goes, next to the BF16 model's (CUDA only).

    python bench/profile_speculator.py OUT.json [--model llama3-8b] [--tokens 4096] [--recipes w8a8 w8a8-kvx]

Random weights of the preset (the cost does not depend on their values), one prefill of --tokens tokens
for the BF16 model and for each speculator recipe under torch.profiler; prints the GPU kernels grouped by
name with their share of the pass, so the gap to the FP8 GEMM floor can be assigned to kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kv_codec import prefill_passes  # noqa: E402
from reprise_gpu.config import get_model_args  # noqa: E402
from reprise_gpu.gguf_loader import random_state_dict  # noqa: E402


def kernel_table(prof, top: int) -> tuple[float, list[dict]]:
    """GPU kernels by name: (total ms of the pass, [{name, ms, calls, share}] largest first)."""
    rows = {}
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t and e.device_type == torch.autograd.DeviceType.CUDA:
            r = rows.setdefault(e.key, {"name": e.key[:90], "ms": 0.0, "calls": 0})
            r["ms"] += t / 1e3
            r["calls"] += e.count
    total = sum(r["ms"] for r in rows.values())
    out = sorted(rows.values(), key=lambda r: -r["ms"])[:top]
    for r in out:
        r["share"] = r["ms"] / max(total, 1e-9)
    return total, out


def profiled(fn, top: int):
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return kernel_table(prof, top)


@torch.no_grad()
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--model", default="llama3-8b")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--recipes", nargs="+", default=["w8a8", "w8a8-kvx"])
    ap.add_argument("--top", type=int, default=12)
    a = ap.parse_args(argv)
    dev = torch.device("cuda")
    T = a.tokens
    args = get_model_args(a.model, max_seq_len=T + 16)
    sd = random_state_dict(args, seed=0, device=dev)
    report = {"model": a.model, "tokens": T, "device": torch.cuda.get_device_name(dev), "passes": {}}
    for name, _, fn in prefill_passes(sd, args, T, dev, a.recipes):
        report["passes"][name] = profiled(fn, a.top)
    with open(a.out, "w") as f:
        json.dump(report, f, indent=1)
    for name, (total, rows) in report["passes"].items():
        print(f"\n{name}: {total:.1f} ms of GPU kernels ({a.model}, {T} tokens)")
        for r in rows:
            print(f"  {r['ms']:8.2f} ms {100 * r['share']:5.1f}% x{r['calls']:<5d} {r['name']}")


if __name__ == "__main__":
    main()
