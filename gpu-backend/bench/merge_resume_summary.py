"""bench/results/summary/resume.json = the GPU half (resume-gpu.json, compose_resume.py) + the edge half.

    python bench/merge_resume_summary.py [--gpu resume-gpu.json] [--policy POLICY.json] [--heap HEAP.json]

--policy: JSON whose "ttft" (or top-level list) holds rows {model, history_tokens, storage_GBps,
policy_choice[, regret]} from the edge's resume policy (src/sessions/resume-policy.ts); --heap: JSON with
"worker_peak_heap_MB_1GB_session" (the storage engineer's 1 GB session proof). Missing halves stay null,
so the file always says what was and was not measured. Rows are matched on (model, history, rate).
"""

from __future__ import annotations

import argparse
import json
import os

SUMMARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench", "results", "summary")
KEYS = ("decode_GBps", "encode_GBps", "speculator_prefill_ratio_8b_4096", "restore_over_predictor_ratio")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpu", default=os.path.join(SUMMARY, "resume-gpu.json"))
    ap.add_argument("--policy", default=None)
    ap.add_argument("--heap", default=None)
    ap.add_argument("--out", default=os.path.join(SUMMARY, "resume.json"))
    a = ap.parse_args(argv)
    g = json.load(open(a.gpu))
    pol = json.load(open(a.policy)) if a.policy and os.path.exists(a.policy) else []
    pol = pol.get("ttft", []) if isinstance(pol, dict) else pol
    choice = {(r["model"], r["history_tokens"], float(r["storage_GBps"])): r for r in pol}
    heap = json.load(open(a.heap)) if a.heap and os.path.exists(a.heap) else {}
    ttft = []
    for r in g["ttft"]:
        p = choice.get((r["model"], r["history_tokens"], float(r["storage_GBps"])), {})
        ttft.append({**{k: r[k] for k in ("model", "history_tokens", "storage_GBps", "recompute_s", "raw_s",
                                          "coded_s")},
                     "policy_choice": p.get("policy_choice"), **({"regret": p["regret"]} if "regret" in p else {}),
                     **({"composed": True} if r.get("composed") else {})})
    out = {**{k: g.get(k) for k in KEYS}, "worker_peak_heap_MB_1GB_session": heap.get("worker_peak_heap_MB_1GB_session"),
           "ttft": ttft, "fuzz": g.get("fuzz"),
           "notes": {"ttft_composed": g.get("ttft_composed"), "encode_variant": g.get("encode_variant"),
                     "speculator_prefill_ratio_recipe": g.get("speculator_prefill_ratio_recipe"),
                     "sources": g.get("sources")}}
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(json.dumps({k: v for k, v in out.items() if k != "ttft"}, indent=1))


if __name__ == "__main__":
    main()
