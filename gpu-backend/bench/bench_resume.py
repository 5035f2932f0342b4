"""Resume time to first token, three ways side by side, and GPU-seconds per resumed turn under load.

    python bench/bench_resume.py OUT [--models llama3-8b,smollm2-135m] [--history 1024,4096,16384]
                                     [--rates 0.1,1,3,10] [--load-sessions 32] [--recipes w8a8-kvx,w8a8-win512]

Per model (SmolLM2 from its GGUF; the 8B shape with random weights, which do not change the timings) the
engines are built once: one raw, one per coded recipe (the speculator derived on the GPU: minutes on the
CPU at 8B, and its digest still names exactly what coded the chunks). Per history of H tokens, the
history is exported as chunks of <= 4096 tokens (raw-bf16 and spec-v2, each by the backend's own
KvRestore.export: the spec-v2 chunks are predicted and coded on the GPU), then a turn of N=32 new tokens
resumes, each way on the real engine (LLMEngine):
    recompute   the BF16 prefill of all H + N tokens (prefill chunks of 4096), then the first token
    raw         verify the raw chunks (container SHA-256), restore them, prefill N, first token
    coded       verify the spec-v2 chunks: SHA-256, then the speculator over H with each layer's two
                segments decoded on the GPU in between (fused restore), restore, prefill N, first token
Two storage measurements per way and rate R (GB/s):
    *_s          composed: chunk bytes / R + the compute measured with the bytes already in memory (the
                 fetch of one chunk overlapped with nothing: an upper bound)
    *_stream_s   measured: a fetch thread receives the chunks at R (one transfer at a time, like one
                 storage connection), hashing each as it arrives and matching its recorded SHA-256 (as the
                 grant path's fetch_object does), into KvRestore.verify_stream, which parses and decodes
                 chunk i while chunk i+1 is still arriving, then the first token
*_compute_s: the chunks in memory, checked in full (the inline path); *_compute_verified_s: the same chunks
as kv_io.Verified (their object hash matched on arrival, the grant path), so only the payload's second
SHA-256 pass is left out. Also measured: the speculator over H alone (restore_over_predictor = fused restore / speculator alone),
prefill tokens/s, decoder GB/s (BF16 bytes restored per second of decode beyond the speculator), H2D GB/s.

Under load (--load-sessions S, one model and history): S sessions decode; then S more resume at once by
one policy; GPU-seconds per resumed turn = the wall time until every resumed session has its first token
/ S (one GPU), with the decoders' tokens/s over that window.

Output: OUT/resume.jsonl (rows with the measured rates; the edge's policy adds policy_choice and regret),
OUT/resume-gpu.json (the summary part this side owns), a table last.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import queue
import sys
import threading
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from reprise_gpu.config import Config  # noqa: E402
from reprise_gpu.engine import kv_io  # noqa: E402
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


def build(name: str, dev: str, recipes: list[str], H_max: int, load: int, load_H: int):
    """One raw engine and one coded engine per recipe, sharing the BF16 model. KV pools: room for H_max
    (twice: the export turns), and for the load test's S resumed + S decoding sessions in the raw and
    first coded engine."""
    blocks = (H_max + 2 * CHUNK) // 16 + 64
    big = max(blocks, load * ((load_H + NEW_TOKENS + 16) // 16 + 1 + (512 + 1024) // 16)) if load else blocks
    common = dict(model=name, device=dev, max_num_seqs=max(4, 2 * load + 4), max_num_batched_tokens=8192,
                  prefill_chunk_size=4096, max_seq_len=max(8192, H_max + NEW_TOKENS + 16),
                  speculator_derive="device" if dev == "cuda" else "cpu")
    tok = None if name == "smollm2-135m" else ByteTokenizer()    # random weights: ids only, no text needed
    t0 = time.perf_counter()
    raw = LLMEngine(Config(**common, num_kv_blocks=big), tokenizer=tok, cuda_graphs=False)
    raw.kv.producer                                                # hash the BF16 weights once, share it
    coded = {}
    for i, r in enumerate(recipes):
        eng = LLMEngine(Config(**common, num_kv_blocks=big if i == 0 else blocks, kv_codec="spec-v2",
                               speculator_recipe=r), model=raw.model, tokenizer=raw.tokenizer, cuda_graphs=False)
        eng.kv._weights_sha256 = raw.kv._weights_sha256            # same model: the same producer fingerprint
        coded[r] = eng
    sync()
    print(f"# {name}: engines built in {time.perf_counter() - t0:.1f} s ({', '.join(recipes)})", flush=True)
    return raw, coded


PIECE = 4 << 20          # bytes per arrival of the throttled stream


def streamed(eng: LLMEngine, prompt: list[int], chunks: list[bytes], rate_GBps: float) -> tuple[float, int]:
    """Seconds to the first token when the chunks stream in at `rate_GBps`, one transfer at a time (a
    fetch thread: piece k of the stream is due at bytes-so-far / rate), each chunk hashed as it arrives and
    matched with its recorded SHA-256 like storage/remote.py fetch_object, then handed on as
    kv_io.Verified; verify_stream restores chunk i while chunk i+1 arrives. -> (seconds, tokens restored)."""
    records = [hashlib.sha256(c).hexdigest() for c in chunks]        # what the edge recorded for each object
    q: queue.Queue = queue.Queue()

    def fetch():
        t0, got = time.perf_counter(), 0
        for c, want in zip(chunks, records):
            h, view = hashlib.sha256(), memoryview(c)
            for off in range(0, len(view), PIECE):
                piece = view[off:off + PIECE]
                got += len(piece)
                wait = t0 + got / (rate_GBps * 1e9) - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                h.update(piece)
            q.put(kv_io.Verified(c) if h.hexdigest() == want else None)
        q.put(None)
    sync()
    t = time.perf_counter()
    th = threading.Thread(target=fetch, daemon=True)
    th.start()
    restored = eng.kv.verify_stream(iter(q.get, None), prompt)
    seq = eng.add_request(prompt, FIRST, kv_chunks=restored)
    while eng.has_work():
        if eng.step():
            break
    sync()
    th.join()
    return time.perf_counter() - t, seq.num_restored


def measure(raw: LLMEngine, coded: dict[str, LLMEngine], H: int, rates: list[float]) -> tuple:
    name, dev = raw.config.model, raw.config.device
    vocab = raw.config.model_args.vocab_size
    g = np.random.default_rng(H)
    prompt = [int(t) for t in g.integers(3, min(vocab, 32000), H + NEW_TOKENS)]
    hist = prompt[:H]
    a = raw.config.model_args
    restored_bf16 = 2 * H * 2 * a.n_layers * a.n_kv_heads * a.head_dim
    t0 = time.perf_counter()
    raw_chunks = export_chunks(raw, hist)
    t_raw_export = time.perf_counter() - t0
    raw_bytes = sum(map(len, raw_chunks))
    rec = timed(lambda: first_token(raw, prompt), reps=2)
    raw_c = timed(lambda: first_token(raw, prompt, raw_chunks), reps=2)
    raw_v = [kv_io.Verified(c) for c in raw_chunks]          # hashed on arrival already (the grant path)
    raw_cv = timed(lambda: first_token(raw, prompt, raw_v), reps=2)
    _, rq = first_token(raw, prompt, raw_chunks)
    x = torch.frombuffer(bytearray(b"\0" * raw_bytes), dtype=torch.uint8)
    h2d = timed(lambda: x.to(dev), reps=3) if dev == "cuda" else float("nan")
    base = dict(model=name, history_tokens=H, new_tokens=NEW_TOKENS, raw_bytes=raw_bytes, recompute_s=rec,
                raw_compute_s=raw_c, raw_compute_verified_s=raw_cv, restored_tokens_raw=rq.num_restored, prefill_tokens_per_s=(H + NEW_TOKENS) / rec,
                h2d_GBps=raw_bytes / 1e9 / h2d, export_raw_s=t_raw_export,
                raw_stream_s={str(R): streamed(raw, prompt, raw_chunks, R)[0] for R in rates})
    per_recipe, chunks_by_recipe = {}, {}
    for recipe, eng in coded.items():
        try:
            t0 = time.perf_counter()
            cc = export_chunks(eng, hist)
            t_export = time.perf_counter() - t0
            coded_bytes = sum(map(len, cc))
            coded_c = timed(lambda: first_token(eng, prompt, cc), reps=2)
            cv = [kv_io.Verified(c) for c in cc]
            coded_cv = timed(lambda: first_token(eng, prompt, cv), reps=2)
            _, sq = first_token(eng, prompt, cc)
            spec_s = speculator_alone(eng, prompt, H)
            verify_s = timed(lambda: eng.kv.verify(cc, prompt), reps=2)
            hash_s = timed(lambda: [eng.kv.parse(c) for c in cc], reps=2)   # container checks only
            per_recipe[recipe] = dict(
                coded_bytes=coded_bytes, bits_per_value=8 * coded_bytes / (restored_bf16 / 2),
                restored_tokens_coded=sq.num_restored, coded_compute_s=coded_c, coded_compute_verified_s=coded_cv, speculator_s=spec_s,
                coded_verify_s=verify_s, container_check_s=hash_s,
                restore_over_predictor=(verify_s - hash_s) / spec_s,
                decoder_GBps=restored_bf16 / 1e9 / max(verify_s - hash_s - spec_s, 1e-9),
                export_coded_s=t_export, chunks=len(cc),
                coded_stream_s={str(R): streamed(eng, prompt, cc, R)[0] for R in rates})
            chunks_by_recipe[recipe] = cc
        except Exception as e:       # one recipe failing must not lose the others' rows
            per_recipe[recipe] = dict(error=repr(e))
        print(f"#   H={H} {recipe}: {json.dumps(per_recipe[recipe])[:300]}", flush=True)
    first = next(iter(coded))
    row = dict(base, recipe=first, **per_recipe[first], recipes=per_recipe)
    return row, prompt, raw_chunks, chunks_by_recipe.get(first)


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


def ttft_rows(m: dict, rates: list[float]) -> list[dict]:
    """One row per storage rate: the composed and the streamed seconds of each way."""
    out = []
    for R in rates:
        t = dict(model=m["model"], history_tokens=m["history_tokens"], storage_GBps=R, recompute_s=m["recompute_s"],
                 raw_s=m["raw_bytes"] / 1e9 / R + m["raw_compute_s"], raw_stream_s=m["raw_stream_s"][str(R)],
                 coded_recipe=m["recipe"])
        if "coded_bytes" in m:
            t.update(coded_s=m["coded_bytes"] / 1e9 / R + m["coded_compute_s"], coded_stream_s=m["coded_stream_s"][str(R)])
        t["coded_s_by_recipe"] = {k: v["coded_bytes"] / 1e9 / R + v["coded_compute_s"]
                                  for k, v in m["recipes"].items() if "coded_bytes" in v}
        t["coded_stream_s_by_recipe"] = {k: v["coded_stream_s"][str(R)] for k, v in m["recipes"].items()
                                         if "coded_stream_s" in v}
        out.append(t)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--models", default="llama3-8b")
    ap.add_argument("--history", default="1024,4096,16384")
    ap.add_argument("--rates", default="0.1,1,3,10")
    ap.add_argument("--recipes", default="w8a8-kvx", help="coded restore predictors; the first is the default")
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
    rates = [float(r) for r in a.rates.split(",")]
    histories = [int(h) for h in a.history.split(",")]
    rows, ttft, load = [], [], []
    for name in a.models.split(","):
        S = a.load_sessions if name == a.load_model and a.load_history in histories else 0
        raw, coded = build(name, dev, a.recipes.split(","), max(histories), S, a.load_history)
        for H in histories:
            m, prompt, rc, cc = measure(raw, coded, H, rates)
            m["meta"] = meta
            f.write(json.dumps(m) + "\n")
            f.flush()
            print(json.dumps({k: v for k, v in m.items() if k not in ("meta", "recipes")}), flush=True)
            rows.append(m)
            for t in ttft_rows(m, rates):
                f.write(json.dumps({"section": "ttft", **t}) + "\n")
                ttft.append(t)
            if S and H == a.load_history and cc is not None:
                for r in under_load(raw, next(iter(coded.values())), prompt, rc, cc, S):
                    f.write(json.dumps(r) + "\n")
                    load.append(r)
        del raw, coded
        torch.cuda.empty_cache() if dev == "cuda" else None
    best = [r for r in rows if r["model"] == "llama3-8b" and r["history_tokens"] == 4096] or rows[-1:]
    summary = {"ttft": ttft, "load": load, "measured": [{k: v for k, v in r.items() if k != "meta"} for r in rows],
               "restore_over_predictor_ratio": best[0].get("restore_over_predictor") if best else None, "meta": meta}
    with open(os.path.join(a.out, "resume-gpu.json"), "w") as g:
        json.dump(summary, g, indent=1)
    print("\nmodel        H      GB/s  recompute  raw(comp/stream)  coded(comp/stream)  best")
    for t in ttft:
        ways = [("recompute", t["recompute_s"]), ("raw", t["raw_stream_s"])]
        if "coded_stream_s" in t:
            ways.append(("coded", t["coded_stream_s"]))
        print(f"{t['model']:<12} {t['history_tokens']:>6} {t['storage_GBps']:>5} {t['recompute_s']:9.3f} "
              f"{t['raw_s']:8.3f}/{t['raw_stream_s']:<8.3f} {t.get('coded_s', float('nan')):8.3f}/"
              f"{t.get('coded_stream_s', float('nan')):<8.3f}  {min(ways, key=lambda w: w[1])[0]}")


if __name__ == "__main__":
    main()
