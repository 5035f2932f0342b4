"""Plots of bench_resume's rows: time to first token against the storage rate, per model and history.

    uv run --with matplotlib python bench/plot_resume.py OUT_DIR ROWS.jsonl [MORE.jsonl ...]

One panel per (model, history): recompute (flat: it reads nothing), raw and coded restores as measured
with the chunks streamed at the rate (solid) and as composed bytes / rate + compute (dotted).
"""

from __future__ import annotations

import json
import os
import sys


def main(argv: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out, paths = argv[0], argv[1:]
    cells = [r for p in paths for r in map(json.loads, open(p)) if r.get("section") == "ttft"]
    for model in sorted({c["model"] for c in cells}):
        hs = sorted({c["history_tokens"] for c in cells if c["model"] == model})
        fig, axes = plt.subplots(1, len(hs), figsize=(4.2 * len(hs), 3.6), squeeze=False)
        for ax, H in zip(axes[0], hs):
            cs = sorted((c for c in cells if c["model"] == model and c["history_tokens"] == H),
                        key=lambda c: c["storage_GBps"])
            x = [c["storage_GBps"] for c in cs]
            ax.plot(x, [c["recompute_s"] for c in cs], "k-", label="recompute (BF16 prefill)")
            for way, colour in (("raw", "tab:blue"), ("coded", "tab:red")):
                if f"{way}_stream_s" in cs[0]:
                    ax.plot(x, [c[f"{way}_stream_s"] for c in cs], "o-", color=colour, label=f"{way} restore, streamed")
                if f"{way}_s" in cs[0]:
                    ax.plot(x, [c[f"{way}_s"] for c in cs], ":", color=colour, label=f"{way}, composed")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("storage GB/s")
            ax.set_title(f"{model}, {H} tokens of history")
        axes[0][0].set_ylabel("seconds to first token")
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, f"ttft_{model}.png"), dpi=110)
        print("wrote", os.path.join(out, f"ttft_{model}.png"))


if __name__ == "__main__":
    main(sys.argv[1:])
