"""Resume time to first token, three ways side by side, and GPU-seconds per resumed turn under load.

    python bench/bench_resume.py OUT [--models llama3-8b,smollm2-135m] [--history 1024,4096,16384]
                                     [--rates 0.1,1,3,10] [--load-sessions 32] [--recipe w8a8-kvx]

Per model and history of H tokens (SmolLM2 from its GGUF; the 8B shape with random weights, which do not
change the timings), one session's history is exported as chunks of <= 4096 tokens (raw-bf16 and
spec-v2, each by the backend's own KvRestore.export: the spec-v2 chunks are predicted and coded on the
GPU), then a turn of N=32 new tokens resumes, each way on the real engine (LLMEngine):
    recompute   the BF16 prefill of all H + N tokens (prefill chunks of 4096), then the first token
    raw         verify the raw chunks (container SHA-256), restore them, prefill N, first token
    coded       verify the spec-v2 chunks: SHA-256, then the speculator over H with each layer's two
                segments decoded on the GPU in between (fused restore), restore, prefill N, first token
Storage: each chunk's bytes come from a reader throttled to R GB/s (a token bucket: bytes / R seconds
per chunk, the fetch of one chunk not overlapped with anything). So at rate R
    raw_s = raw_bytes / R + raw_compute_s,    coded_s = coded_bytes / R + coded_compute_s
with the compute parts measured once per (model, H). Also measured: the speculator over H alone
(restore_over_predictor = fused restore / speculator alone), prefill tokens/s, decoder GB/s (BF16 bytes
restored per second of decode beyond the speculator), H2D transfer GB/s.

Under load (--load-sessions S, 8B shape): S sessions decode; then S more resume at once (history 4096)
by one policy; GPU-seconds per resumed turn = the wall time until every resumed session has its first
token / S (one GPU), with the decoders' tokens/s over that window.

Output: OUT/resume.jsonl (rows with the measured rates; the edge's policy adds policy_choice and regret),
OUT/resume-gpu.json (the summary part this side owns: bench/results/summary/resume-gpu.json), a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from reprise_gpu.config import Config  # noqa: E402
from reprise_gpu.engine.detokenizer import ByteTokenizer  # noqa: E402
from reprise_gpu.engine.kv_restore import Restored  # noqa: E402
from reprise_gpu.engine.llm_engine import LLMEngine  # noqa: E402
from reprise_gpu.engine.sampling import SamplingParams  # noqa: E402
from reprise_gpu.speculator.model import SeqInput  # noqa: E402

NEW_TOKENS = 32
CHUNK = 4096
FIRST = SamplingParams(max_tokens=1, temperature=0)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def first_token(eng: LLMEngine, prompt: list[int], kv=()) -> tuple[float, object]:
    """Seconds from add_request (verification included when kv holds bytes) to the first sampled token."""
    sync()
    t = time.perf_counter()
    seq = eng.add_request(prompt, FIRST, kv_chunks=kv)
    while eng.has_work():
        if eng.step():
            break
    sync()
    return time.perf_counter() - t, seq


def export_chunks(eng: LLMEngine, history: list[int]) -> list[bytes]:
    """The K/V of `history` as the backend exports it, one turn per CHUNK tokens: the turn whose prompt
    ends at token e exports [restored, e)."""
    out: list[bytes] = []
    for s in range(0, len(history), CHUNK):
        e = min(len(history), s + CHUNK)
        seq = eng.add_request(history[:e], FIRST, kv_chunks=list(out), export_kv=True)
        while eng.has_work():
            eng.step()
        out.append(seq.kv_export.result())
    return out


def timed(fn, reps: int = 3):
    fn()
    ts = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def speculator_alone(eng: LLMEngine, prompt: list[int], H: int) -> float:
    """The speculator over H tokens in the same chunks, with the exact K/V supplied (no decoding)."""
    coder = eng.kv.coder
    a = eng.config.model_args
    exact = torch.zeros((a.n_layers, 2, a.n_kv_heads, H, a.head_dim), dtype=torch.float32, device=coder.spec.device)

    def run():
        for s in range(0, H, CHUNK):
            e = min(H, s + CHUNK)
            past = exact[:, :, :, :s] if s else None
            coder.spec.predict_all([SeqInput(torch.tensor(prompt[s:e]), s, past)], [exact[:, :, :, s:e]])
    return timed(run)


def measure(name: str, H: int, dev: str, recipe: str, load: int) -> tuple:
    blocks = (H + 2 * CHUNK) // 16 + 64
    if load:                        # S resumed sessions of H + N tokens and S decoders of 512 + what they generate
        blocks = max(blocks, load * ((H + NEW_TOKENS + 16) // 16 + 1 + (512 + 1024) // 16))
    common = dict(model=name, device=dev, num_kv_blocks=blocks, max_num_seqs=max(4, 2 * load + 4),
                  max_num_batched_tokens=8192, prefill_chunk_size=4096,
                  max_seq_len=max(8192, H + NEW_TOKENS + 16))
    tok = None if name == "smollm2-135m" else ByteTokenizer()    # random weights: ids only, no text needed
    raw = LLMEngine(Config(**common), tokenizer=tok, cuda_graphs=False)
    coded = LLMEngine(Config(**common, kv_codec="spec-v2"), model=raw.model, tokenizer=raw.tokenizer, cuda_graphs=False)
    if recipe != "w8a8-kvx":
        from reprise_gpu.engine.kv_restore import SpecKvCoder
        coded.kv.coder = SpecKvCoder(raw.model, torch.device(dev), recipe=recipe)
    vocab = raw.config.model_args.vocab_size
    g = np.random.default_rng(H)
    prompt = [int(t) for t in g.integers(3, min(vocab, 32000), H + NEW_TOKENS)]
    hist = prompt[:H]
    t0 = time.perf_counter()
    raw_chunks = export_chunks(raw, hist)
    t_raw_export = time.perf_counter() - t0
    t0 = time.perf_counter()
    coded_chunks = export_chunks(coded, hist)
    t_coded_export = time.perf_counter() - t0
    raw_bytes, coded_bytes = sum(map(len, raw_chunks)), sum(map(len, coded_chunks))
    rec = timed(lambda: first_token(raw, prompt), reps=2)
    raw_c = timed(lambda: first_token(raw, prompt, raw_chunks), reps=2)
    coded_c = timed(lambda: first_token(coded, prompt, coded_chunks), reps=2)
    _, sq = first_token(coded, prompt, coded_chunks)
    _, rq = first_token(raw, prompt, raw_chunks)
    spec_s = speculator_alone(coded, prompt, H)
    verify_s = timed(lambda: coded.kv.verify(coded_chunks, prompt), reps=2)
    hash_s = timed(lambda: [coded.kv.parse(c) for c in coded_chunks], reps=2)   # container checks only
    x = torch.frombuffer(bytearray(b"\0" * raw_bytes), dtype=torch.uint8)
    h2d = timed(lambda: x.to(dev), reps=3) if dev == "cuda" else float("nan")
    restored_bf16 = 2 * H * 2 * raw.config.model_args.n_layers * raw.config.model_args.n_kv_heads * \
        raw.config.model_args.head_dim
    return dict(model=name, history_tokens=H, new_tokens=NEW_TOKENS, recipe=recipe, raw_bytes=raw_bytes,
                coded_bytes=coded_bytes, bits_per_value=8 * coded_bytes / (restored_bf16 / 2),
                restored_tokens_coded=sq.num_restored, restored_tokens_raw=rq.num_restored,
                recompute_s=rec, raw_compute_s=raw_c, coded_compute_s=coded_c,
                speculator_s=spec_s, coded_verify_s=verify_s, container_check_s=hash_s,
                restore_over_predictor=(verify_s - hash_s) / spec_s,
                prefill_tokens_per_s=(H + NEW_TOKENS) / rec,
                decoder_GBps=restored_bf16 / 1e9 / max(verify_s - hash_s - spec_s, 1e-9),
                h2d_GBps=raw_bytes / 1e9 / h2d, export_raw_s=t_raw_export, export_coded_s=t_coded_export,
                chunks=len(coded_chunks)), raw, coded, prompt, coded_chunks, raw_chunks


def under_load(raw: LLMEngine, coded: LLMEngine, prompt, raw_chunks, coded_chunks, S: int) -> list[dict]:
    """S sessions decode while S more resume at once, per policy."""
    rows = []
    a = raw.config.model_args
    for policy in ("recompute", "raw", "coded"):
        eng = coded if policy == "coded" else raw
        others = [eng.add_request([5 + i % 200 for i in range(512)], SamplingParams(max_tokens=10_000, temperature=0,
                                                                       ignore_eos=True)) for _ in range(S)]
        while any(o.num_completion_tokens == 0 for o in others):
            eng.step()
        start_tokens = sum(o.num_completion_tokens for o in others)
        sync()
        t0 = time.perf_counter()
        if policy == "recompute":
            resumed = [eng.add_request(prompt, FIRST) for _ in range(S)]
        else:
            chunks = coded_chunks if policy == "coded" else raw_chunks
            resumed = []
            for _ in range(S):          # verification interleaved with the decoders' steps, one session at a time
                r: Restored = eng.kv.verify(chunks, prompt)
                resumed.append(eng.add_request(prompt, FIRST, kv_chunks=r))
                eng.step()
        while any(r.num_completion_tokens == 0 for r in resumed):
            eng.step()
        sync()
        window = time.perf_counter() - t0
        made = sum(o.num_completion_tokens for o in others) - start_tokens
        for o in others:
            eng.abort(o.seq_id)
        while eng.has_work():
            eng.step()
        rows.append(dict(section="load", policy=policy, sessions=S, history_tokens=len(prompt) - NEW_TOKENS,
                         window_s=window, gpu_s_per_resumed_turn=window / S, decoder_tokens_per_s=made / window,
                         restored=sum(r.num_restored for r in resumed)))
        rows[-1]["model"] = raw.config.model
        rows[-1]["model_layers"] = a.n_layers
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--models", default="llama3-8b")
    ap.add_argument("--history", default="1024,4096,16384")
    ap.add_argument("--rates", default="0.1,1,3,10")
    ap.add_argument("--recipe", default="w8a8-kvx")
    ap.add_argument("--load-sessions", type=int, default=32)
    ap.add_argument("--load-model", default="llama3-8b")
    ap.add_argument("--load-history", type=int, default=4096)
    a = ap.parse_args(argv)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    os.makedirs(a.out, exist_ok=True)
    meta = dict(date=time.strftime("%Y-%m-%dT%H:%M:%S"), host=platform.node(),
                device=torch.cuda.get_device_name() if dev == "cuda" else "cpu", torch=torch.__version__,
                argv=sys.argv[1:] if argv is None else argv)
    f = open(os.path.join(a.out, "resume.jsonl"), "a")
    rows, ttft, load = [], [], []
    for name in a.models.split(","):
        for H in (int(h) for h in a.history.split(",")):
            load_here = a.load_sessions if (H == a.load_history and name == a.load_model) else 0
            m, raw, coded, prompt, cc, rc = measure(name, H, dev, a.recipe, load_here)
            m["meta"] = meta
            f.write(json.dumps(m) + "\n")
            f.flush()
            print(json.dumps({k: v for k, v in m.items() if k != "meta"}), flush=True)
            rows.append(m)
            for R in (float(r) for r in a.rates.split(",")):
                t = dict(model=name, history_tokens=H, storage_GBps=R, recompute_s=m["recompute_s"],
                         raw_s=m["raw_bytes"] / 1e9 / R + m["raw_compute_s"],
                         coded_s=m["coded_bytes"] / 1e9 / R + m["coded_compute_s"])
                f.write(json.dumps({"section": "ttft", **t}) + "\n")
                ttft.append(t)
            if load_here:
                for r in under_load(raw, coded, prompt, rc, cc, a.load_sessions):
                    f.write(json.dumps(r) + "\n")
                    load.append(r)
            del raw, coded
            torch.cuda.empty_cache() if dev == "cuda" else None
    best = [r for r in rows if r["model"] == "llama3-8b" and r["history_tokens"] == 4096] or rows[-1:]
    summary = {"ttft": ttft, "load": load, "measured": [{k: v for k, v in r.items() if k != "meta"} for r in rows],
               "restore_over_predictor_ratio": best[0]["restore_over_predictor"] if best else None, "meta": meta}
    with open(os.path.join(a.out, "resume-gpu.json"), "w") as g:
        json.dump(summary, g, indent=1)
    print("\nmodel        H      GB/s  recompute_s  raw_s   coded_s  best")
    for t in ttft:
        best3 = min(("recompute", t["recompute_s"]), ("raw", t["raw_s"]), ("coded", t["coded_s"]), key=lambda x: x[1])
        print(f"{t['model']:<12} {t['history_tokens']:>6} {t['storage_GBps']:>5} {t['recompute_s']:10.3f} "
              f"{t['raw_s']:8.3f} {t['coded_s']:8.3f}  {best3[0]}")


if __name__ == "__main__":
    main()
