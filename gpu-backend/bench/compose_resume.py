"""The GPU half of bench/results/summary/resume.json, from the H200 measurement files (never by hand).

    python bench/compose_resume.py [--coder CODER.jsonl] [--cost PREDICTORS.jsonl] [--resume RESUME.jsonl]
                                   [--fuzz FUZZ.json] --out bench/results/summary/resume-gpu.json

decode_GBps / encode_GBps: the best GPU spec-v2 figure at 4096 tokens, 8B shape (bench_coder rows that
decoded right). speculator_prefill_ratio_8b_4096: the cheapest recipe's prefill / BF16 prefill
(bench_predictors cost rows), with every recipe's ratio beside it. ttft rows: from bench_resume's own
rows when that bench ran; otherwise composed from measured parts and marked "composed": recompute = the
BF16 prefill of H tokens; raw = raw bytes / storage rate; coded = coded bytes / rate + the speculator's
prefill + the layer-by-layer decode of the same chunk (the restore runs them one after another on one
stream). restore_over_predictor_ratio likewise (speculator + layer-by-layer decode) / speculator when no
fused-restore measurement exists. fuzz: the fuzz script's {cases, crashes, hangs, wrong_decodes}.
"""

from __future__ import annotations

import argparse
import json
import os

RATES = (0.1, 1.0, 3.0, 10.0)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench", "results")


def rows(path):
    if isinstance(path, list):
        return [r for p in path for r in rows(p)]
    return [json.loads(line) for line in open(path)] if path and os.path.exists(path) else []


def kv_bytes_per_token(model: str) -> int:
    from reprise_gpu.config import get_model_args
    a = get_model_args(model)
    return 2 * a.n_layers * a.n_kv_heads * a.head_dim * 2           # K and V, BF16


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--coder", default=os.path.join(RESULTS, "kv-coder-h200-2026-12-01", "run3", "coder.jsonl"))
    ap.add_argument("--cost", default=os.path.join(RESULTS, "predictor-cost-h200-2026-12-01", "predictors.jsonl"))
    ap.add_argument("--resume", action="append", default=[], help="bench_resume's resume.jsonl (repeatable), if it ran")
    ap.add_argument("--fuzz", default=os.path.join(RESULTS, "fuzz-cpu-2026-12-01", "fuzz.json"))
    ap.add_argument("--recipe", default="w8a8-kvx", help="the restore's predictor")
    ap.add_argument("--out", default=os.path.join(RESULTS, "summary", "resume-gpu.json"))
    a = ap.parse_args(argv)
    coder = [r for r in rows(a.coder) if "WRONG" not in str(r.get("variant", ""))]
    cost = [r for r in rows(a.cost) if r.get("section") == "cost"]

    def best(op, model, tokens):
        c = [r for r in coder if r["op"] == op and r["model"] == model and r["tokens"] == tokens and r["coder"] == "gpu-v2"]
        return max(c, key=lambda r: r["GBps"]) if c else None

    def cost_ms(model, tokens, predictor):
        c = [r["ms"] for r in cost if r["model"] == model and r["tokens"] == tokens and r["predictor"] == predictor]
        return c[0] if c else None

    def coder_row(model, tokens, variant, op="decode"):
        c = [r for r in coder if r["op"] == op and r["model"] == model and r["tokens"] == tokens
             and r.get("variant") == variant]
        return c[0] if c else None

    dec, enc = best("decode", "llama3-8b", 4096), best("encode", "llama3-8b", 4096)
    enc_host = coder_row("llama3-8b", 4096, None, "encode")
    ratios = {r["predictor"]: r["vs_bf16"] for r in cost if r["model"] == "llama3-8b" and r["tokens"] == 4096}
    cheapest = min((k for k in ratios if k != "bf16"), key=ratios.get) if ratios else None
    out = {"decode_GBps": dec and round(dec["GBps"], 2), "decode_variant": dec and dec.get("variant"),
           "encode_GBps": enc and round(enc["GBps"], 2), "encode_variant": enc and enc.get("variant"),
           "encode_to_host_bytes_GBps": enc_host and round(enc_host["GBps"], 2),
           "speculator_prefill_ratio_8b_4096": cheapest and round(ratios[cheapest], 3),
           "speculator_prefill_ratio_recipe": cheapest, "speculator_prefill_ratios_8b_4096": ratios}
    measured = [r for r in rows(a.resume) if r.get("section") == "ttft"]
    ttft, composed = [], not measured
    if measured:
        # raw_s / coded_s: the throttled runs (chunks streamed into verify_stream at the rate), when the bench
        # made them; the composed bytes / rate + compute beside them
        ttft = [{"model": r["model"], "history_tokens": r["history_tokens"], "storage_GBps": r["storage_GBps"],
                 "recompute_s": r["recompute_s"], "raw_s": r.get("raw_stream_s", r["raw_s"]),
                 "coded_s": r.get("coded_stream_s", r.get("coded_s")), "raw_composed_s": r["raw_s"],
                 "coded_composed_s": r.get("coded_s"), "coded_recipe": r.get("coded_recipe"),
                 "coded_s_by_recipe": r.get("coded_stream_s_by_recipe")} for r in measured]
        fused = [r for r in rows(a.resume) if "restore_over_predictor" in r and r["model"] == "llama3-8b"
                 and r["history_tokens"] == 4096]
        out["restore_over_predictor_ratio"] = fused[0]["restore_over_predictor"] if fused else None
    for model in ("llama3-8b", "smollm2-135m") if composed else ():
        for H in (1024, 4096, 16384):
            bf16, spec = cost_ms(model, H, "bf16"), cost_ms(model, H, a.recipe)
            lay = coder_row(model, H, "per-layer")
            if bf16 is None or spec is None or lay is None:
                continue
            raw_bytes = H * kv_bytes_per_token(model)
            coded_bytes = raw_bytes * lay["bits_per_value"] / 16
            for R in RATES:
                ttft.append(dict(model=model, history_tokens=H, storage_GBps=R, recompute_s=bf16 / 1e3,
                                 raw_s=raw_bytes / 1e9 / R, coded_s=coded_bytes / 1e9 / R + spec / 1e3 + lay["seconds"],
                                 composed=True, policy_choice=None))
            if model == "llama3-8b" and H == 4096:
                out["restore_over_predictor_ratio"] = round((spec / 1e3 + lay["seconds"]) / (spec / 1e3), 3)
                out["restore_over_predictor_composed"] = True
    out["ttft"] = ttft
    out["ttft_composed"] = composed
    fz = json.load(open(a.fuzz)) if a.fuzz and os.path.exists(a.fuzz) else None
    out["fuzz"] = fz and {k: fz[k] for k in ("cases", "crashes", "hangs", "wrong_decodes")}
    out["load"] = [r for r in rows(a.resume) if r.get("section") == "load"]
    rel = lambda v: os.path.relpath(v, os.path.join(RESULTS, "..", ".."))  # noqa: E731
    out["sources"] = {k: rel(v) for k, v in dict(coder=a.coder, cost=a.cost, fuzz=a.fuzz).items() if v and os.path.exists(v)}
    out["sources"]["resume"] = [rel(v) for v in a.resume if os.path.exists(v)]
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(json.dumps({k: v for k, v in out.items() if k not in ("ttft", "speculator_prefill_ratios_8b_4096")}, indent=1))


if __name__ == "__main__":
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    main()
