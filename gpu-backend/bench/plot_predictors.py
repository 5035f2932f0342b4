"""Plots of the 2026-12-01 H200 runs: predictor cost per recipe (with the bits measured for it where they
exist) and coder throughput by chunk length.

    uv run --with matplotlib==3.10.0 python gpu-backend/bench/plot_predictors.py
"""

from __future__ import annotations

import json
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

R = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench", "results")
# bits per value on real SmolLM2 KV (H200, spec-v1, model b, 5 transcripts): kv-codec-h200-2026-11-28/README.md
BITS = {"w8a8": 6.917, "w8a8-kv": 6.557, "w8a8-kvx": 5.225}


def rows(path):
    return [json.loads(line) for line in open(path)]


def cost_plot():
    cost = [r for r in rows(os.path.join(R, "predictor-cost-h200-2026-12-01", "predictors.jsonl"))
            if r.get("section") == "cost" and r["model"] == "llama3-8b" and r["predictor"] != "bf16"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for T, mk in ((4096, "o"), (16384, "s")):
        c = [r for r in cost if r["tokens"] == T]
        a.barh([f"{r['predictor']} ({T})" for r in c], [r["vs_bf16"] for r in c], alpha=0.7)
        for r in c:
            if r["predictor"] in BITS:
                b.scatter(r["vs_bf16"], BITS[r["predictor"]], marker=mk, label=f"{r['predictor']}, {T} tokens")
    a.axvline(0.6, color="k", ls="--", lw=1)
    a.set_xlabel("prefill time / BF16 prefill (8B shape)")
    a.set_title("speculator cost (windowed recipes: bits not measured)")
    b.axhline(5.0, color="k", ls="--", lw=1)
    b.axvline(0.6, color="k", ls=":", lw=1)
    b.set_xlabel("cost vs BF16 (8B shape)")
    b.set_ylabel("bits per value (SmolLM2 KV, 2026-11-28)")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(R, "predictor-cost-h200-2026-12-01", "cost_and_bits.png"), dpi=110)


def coder_plot():
    c = [r for r in rows(os.path.join(R, "kv-coder-h200-2026-12-01", "run3", "coder.jsonl")) if r["coder"] == "gpu-v2"
         and "WRONG" not in str(r.get("variant"))]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for model in ("smollm2-135m", "llama3-8b"):
        for op, v, ls in (("decode", "lut", "-"), ("decode", "per-layer", ":"), ("encode", None, "--"),
                          ("encode", "stream-stays-on-gpu", "-.")):
            p = sorted((r["tokens"], r["GBps"]) for r in c if r["model"] == model and r["op"] == op and r.get("variant") == v)
            ax.plot([x for x, _ in p], [y for _, y in p], ls, marker="o", label=f"{model} {op} {v or 'to host'}")
    ax.axhline(100, color="k", lw=1)
    ax.axhline(50, color="grey", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("chunk tokens")
    ax.set_ylabel("GB/s of BF16 KV")
    ax.set_title("spec-v2 GPU coder, H200 (targets: decode 100, encode 50)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(R, "kv-coder-h200-2026-12-01", "throughput.png"), dpi=110)


if __name__ == "__main__":
    cost_plot()
    coder_plot()
