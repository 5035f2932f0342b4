"""Charts of a KV codec run: bits per value by layer, and bits against predictor cost.

    uv run --with matplotlib python bench/plot_kv_codec.py RESULTS_DIR

Reads RESULTS_DIR/kv_codec_layers.csv, kv_codec.jsonl (the "variants" records) and, when present,
profile_speculator_<model>.json (bench/profile_speculator.py: GPU kernel time of one prefill per
predictor recipe); writes bits_by_layer.png and bits_vs_cost.png there. matplotlib is not a dependency
of the backend: it is only needed here, hence `--with`.
"""

from __future__ import annotations

import csv
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def bits_by_layer(d: str) -> None:
    with open(os.path.join(d, "kv_codec_layers.csv")) as f:
        rows = list(csv.DictReader(f))
    layers = [int(r["layer"]) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharex=True)
    for ax, mode, raw in ((axes[0], "bf16", 16), (axes[1], "fp8", 8)):
        for model, style in (("baseline", "--"), ("improved", "-")):
            for kv, color in (("K", "tab:blue"), ("V", "tab:orange")):
                ax.plot(layers, [float(r[f"{mode}_{model}_{kv}"]) for r in rows], style, color=color,
                        label=f"{kv}, model {'(a) baseline' if model == 'baseline' else '(b) improved'}")
        ax.set_title(f"{mode.upper()} cache (raw {raw} bits)")
        ax.set_xlabel("layer")
        ax.set_ylabel("bits per value")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("spec-v1 bits per value by layer (SmolLM2-135M, self-generated transcripts)")
    fig.tight_layout()
    fig.savefig(os.path.join(d, "bits_by_layer.png"), dpi=110)


def bits_vs_cost(d: str) -> None:
    bits = {}
    with open(os.path.join(d, "kv_codec.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r.get("section") == "variants" and "bits_per_value" in r:
                bits[r["variant"]] = r["bits_per_value"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"llama3-8b": "o", "smollm2-135m": "s"}
    unmeasured = set(bits)
    for model, marker in markers.items():
        path = os.path.join(d, f"profile_speculator_{model}.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            prof = json.load(f)
        base = prof["passes"]["bf16"][0]
        pts = [(prof["passes"][v][0] / base, bits[v], v) for v in bits if v in prof["passes"]]
        unmeasured -= {v for _, _, v in pts}
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, label=f"cost at the {model} shape, "
                f"{prof['tokens']} tokens")
        for x, y, v in pts:
            ax.annotate(v, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.axvline(1.0, color="gray", lw=0.8)
    ax.set_xlabel("predictor prefill GPU time / BF16 prefill GPU time (H200)")
    ax.set_ylabel("bits per value (BF16 cache, model b)")
    note = f"not plotted (emulated, no fast kernel): {', '.join(f'{v} {bits[v]:.2f}' for v in sorted(unmeasured))}"
    ax.set_title("bits per value against predictor cost", fontsize=11)
    fig.text(0.01, 0.01, note, fontsize=7)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(os.path.join(d, "bits_vs_cost.png"), dpi=110)


if __name__ == "__main__":
    out = sys.argv[1]
    bits_by_layer(out)
    bits_vs_cost(out)
