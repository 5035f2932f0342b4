"""bench_lora.py's JSONL -> bench/results/summary/lora.json (the figures) + plots + a short table.

    python bench/summarize_lora.py RESULTS_DIR [OLDER_DIR ...] [--summary bench/results/summary/lora.json]

With several result directories (newest first), each model's rows come from the newest run that served
it; a peer that run did not measure (PEFT, the naive loop, cold loads) comes from the newest run that did,
and says so (`peft_run`, `source_runs`): those peers do not depend on this project's kernels.

rows: {model, adapters, tokens_per_s, base_tokens_per_s, peft_tokens_per_s, p99_tpot_ms} per model and
adapter count (peft_tokens_per_s is null where PEFT was not run at that count; bgmv_tokens_per_s: the same
N on the old BGMV decode kernels, bench_lora.py --old-kernels, else null; decode_kernels: which kernels
the row ran); merged_match: true only if every merged-weights check of every model matched on every
prompt (float32 engine since the tiles change; before, BF16); merged_match_bf16: "same/prompts" of the
BF16 engine per model; cold_load_ms_by_rank per model.
"""

from __future__ import annotations

import argparse
import glob
import json
import os


def load(d, logs=()):
    """Rows of every lora_<model>.jsonl in d, plus rows printed in bench logs given as MODEL=PATH (a run
    cut by its time limit before its JSONL came back prints the same rows, less the run's metadata)."""
    rows = []
    for p in sorted(glob.glob(os.path.join(d, "lora_*.jsonl"))):
        rows += [json.loads(line) for line in open(p) if line.strip()]
    for spec in logs:
        model, path = spec.split("=", 1)
        rows += [{**json.loads(line), "model": model} for line in open(path) if line.startswith("{\"variant\"")]
    return [r for r in rows if "variant" in r]          # (lora_kernels.jsonl rows are the kernel bench's)


def summarize(rows):
    out = {"rows": [], "merged_match": None, "cold_load_ms_by_rank": {}, "naive": [], "merged": {}, "errors": []}
    models = sorted({r["model"] for r in rows})
    matches = []
    for m in models:
        mr = [r for r in rows if r["model"] == m]
        base = next((r for r in mr if r["variant"] == "base"), None)
        peft = {r["adapters"]: r for r in mr if r["variant"] == "peft"}
        bgmv = {r["adapters"]: r for r in mr if r["variant"] == "lora-bgmv"}     # the old decode kernels
        for r in (r for r in mr if r["variant"] == "lora"):
            p = peft.get(r["adapters"])
            out["rows"].append(dict(model=m, adapters=r["adapters"], run=r.get("run"),
                                    peft_run=p.get("run") if p else None, tokens_per_s=round(r["tokens_per_s"], 1),
                                    base_tokens_per_s=round(base["tokens_per_s"], 1) if base else None,
                                    peft_tokens_per_s=round(p["tokens_per_s"], 1) if p else None,
                                    bgmv_tokens_per_s=round(bgmv[r["adapters"]]["tokens_per_s"], 1)
                                    if r["adapters"] in bgmv else None,
                                    decode_kernels=r.get("decode_kernels", "bgmv"),
                                    p99_tpot_ms=round(r["p99_tpot_ms"], 3), p50_tpot_ms=round(r["p50_tpot_ms"], 3),
                                    distinct_adapters_used=r.get("distinct")))
        out["naive"] += [dict(model=m, adapters=r["adapters"], tokens_per_s=round(r["tokens_per_s"], 1))
                         for r in mr if r["variant"] == "naive"]
        mg = next((r for r in mr if r["variant"] == "merged"), None)
        if mg:
            out["merged"][m] = round(mg["tokens_per_s"], 1)
        # merged_match counts the float32 checks only (exact equality is defined there); a BF16-only check
        # (runs before the tiles change) goes to merged_match_bf16 with the float32 ones' BF16 counts
        f32 = [r for r in mr if r["variant"] == "merged_match" and r.get("dtype") == "float32"]
        matches += [r["match"] for r in f32]
        if f32:
            out.setdefault("merged_match_checked", []).append(dict(model=m, run=f32[0].get("run"), prompts=f32[0]["prompts"],
                                                                   adapters=f32[0]["adapters"]))
        out.setdefault("merged_match_bf16", {})[m] = next(
            (f"{r['bf16_same']}/{r['bf16_prompts']}" for r in mr if r["variant"] == "merged_match" and "bf16_same" in r),
            next((f"{sum(d['same'] for d in r['detail'])}/{len(r['detail'])}" for r in mr
                  if r["variant"] == "merged_match" and r.get("dtype") != "float32" and "detail" in r), None))
        out["cold_load_ms_by_rank"][m] = {str(r["rank"]): {"host_to_gpu": round(r["host_to_gpu_ms"], 3),
                                                           "storage_to_gpu": round(r["storage_to_gpu_ms"], 2)}
                                          for r in mr if r["variant"] == "cold_load"}
        out["errors"] += [dict(model=m, step=r["step"], error=r["error"]) for r in mr if r["variant"] == "error"]
    out["merged_match"] = bool(matches) and all(matches)
    return out


def plot(s, d):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    for m in sorted({r["model"] for r in s["rows"]}):
        rs = sorted((r for r in s["rows"] if r["model"] == m), key=lambda r: r["adapters"])
        xs = [r["adapters"] for r in rs]
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        ax[0].plot(xs, [r["tokens_per_s"] for r in rs], "o-", label="LoRA (SGMV/BGMV, graphs)")
        if rs and rs[0]["base_tokens_per_s"]:
            ax[0].axhline(rs[0]["base_tokens_per_s"], color="k", ls="--", label="base, no LoRA")
        if m in s["merged"]:
            ax[0].axhline(s["merged"][m], color="g", ls=":", label="one adapter merged")
        nv = sorted((r for r in s["naive"] if r["model"] == m), key=lambda r: r["adapters"])
        ax[0].plot([r["adapters"] for r in nv], [r["tokens_per_s"] for r in nv], "s-", label="naive loop")
        pf = [(r["adapters"], r["peft_tokens_per_s"]) for r in rs if r["peft_tokens_per_s"]]
        ax[0].plot([x for x, _ in pf], [y for _, y in pf], "^-", label="HF PEFT")
        ax[0].set(xscale="log", yscale="log", xlabel="distinct adapters", ylabel="tokens/s", title=m)
        ax[0].legend(fontsize=8)
        ax[1].plot(xs, [r["p50_tpot_ms"] for r in rs], "o-", label="p50")
        ax[1].plot(xs, [r["p99_tpot_ms"] for r in rs], "o-", label="p99")
        ax[1].set(xscale="log", xlabel="distinct adapters", ylabel="time per output token (ms)", title=m)
        ax[1].legend()
        fig.tight_layout()
        fig.savefig(os.path.join(d, f"lora_{m}.png"), dpi=110)
        plt.close(fig)


def combine(runs: list[tuple[str, list[dict]]]) -> list[dict]:
    """Rows of several runs (newest first): per model, the newest run with LoRA rows; PEFT, naive and
    cold-load rows of a model from the newest run that has them, tagged with that run."""
    out = []
    models = sorted({r["model"] for _, rows in runs for r in rows})
    peers = ("peft", "naive", "cold_load")
    for m in models:
        main = next(((name, rows) for name, rows in runs if any(r["model"] == m and r["variant"] == "lora" for r in rows)),
                    None)
        if main is None:
            continue
        out += [{**r, "run": main[0]} for r in main[1] if r["model"] == m]
        for v in peers:
            if any(r["model"] == m and r["variant"] == v for r in main[1]):
                continue
            older = next(((name, rows) for name, rows in runs if any(r["model"] == m and r["variant"] == v for r in rows)),
                         None)
            if older:
                out += [{**r, "run": older[0]} for r in older[1] if r["model"] == m and r["variant"] == v]
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dirs", nargs="+", help="result directories, newest first")
    p.add_argument("--summary", default=None)
    p.add_argument("--log", action="append", default=[], help="MODEL=bench log (rows printed by bench_lora.py); "
                   "read with the directory it lies in")
    a = p.parse_args()
    runs = []
    for d in a.dirs:
        logs = [x for x in a.log if os.path.dirname(os.path.abspath(x.split("=", 1)[1])) == os.path.abspath(d)]
        runs.append((os.path.relpath(d, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")),
                     load(d, logs)))
    s = summarize(combine(runs))
    a.dir = a.dirs[0]
    path = a.summary or os.path.join(a.dir, "lora.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(s, f, indent=1)
    try:
        plot(s, a.dir)
    except ImportError:
        print("matplotlib not installed: no plots")
    print(f"{'model':14s} {'N':>5s} {'tok/s':>9s} {'base':>9s} {'%base':>6s} {'peft':>8s} {'xPEFT':>6s} {'p99 ms':>7s}")
    for r in s["rows"]:
        pct = 100 * r["tokens_per_s"] / r["base_tokens_per_s"] if r["base_tokens_per_s"] else float("nan")
        xp = r["tokens_per_s"] / r["peft_tokens_per_s"] if r["peft_tokens_per_s"] else float("nan")
        print(f"{r['model']:14s} {r['adapters']:5d} {r['tokens_per_s']:9.0f} {r['base_tokens_per_s'] or 0:9.0f} "
              f"{pct:6.1f} {r['peft_tokens_per_s'] or 0:8.0f} {xp:6.1f} {r['p99_tpot_ms']:7.2f}")
    print("merged_match", s["merged_match"], "naive", s["naive"], "merged", s["merged"])
    print("cold loads (ms)", json.dumps(s["cold_load_ms_by_rank"]))
    if s["errors"]:
        print("ERRORS", s["errors"])


if __name__ == "__main__":
    main()
