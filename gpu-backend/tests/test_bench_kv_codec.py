"""The KV codec benchmark on the tiny preset: a run cut by its time budget resumes where it stopped."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))

import bench_kv_codec  # noqa: E402


def test_smoke_run_resumes_from_its_work_dir(tmp_path):
    out = str(tmp_path / "kv")
    argv = [out, "--smoke", "--sections", "bits", "variants", "--workers", "1"]
    bench_kv_codec.main(argv + ["--time-budget", "0"])          # prepare only: no chunk coded yet
    assert "PARTIAL" in open(out + ".md").read() and os.path.getsize(out + "_chunks.jsonl") == 0
    bench_kv_codec.main(argv)                                     # the same work dir: codes every chunk
    md = open(out + ".md").read()
    assert "PARTIAL" not in md and "spec-v1 improved (b) BF16" in md and "w8a16-kvx" in md
    chunks = [json.loads(line) for line in open(out + "_chunks.jsonl")]
    bits = [c for c in chunks if c["key"][0] == "bits"]
    assert bits and all(c["spec_bf16_improved"] < 16 * c["values"] for c in bits)
    records = [json.loads(line) for line in open(out + ".jsonl")]
    assert any(r.get("section") == "prepare" and "reused" in r for r in records)   # transcripts not regenerated
