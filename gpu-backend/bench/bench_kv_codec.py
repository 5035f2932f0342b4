"""Speculative KV coding on real chat transcripts: bits per value, and what the predictor costs.

    python bench/bench_kv_codec.py OUT                # H200: SmolLM2 transcripts + llama3-8b timing
    python bench/bench_kv_codec.py OUT --smoke        # tiny preset on the CPU (exact CPU speculator), seconds

1. Transcripts: the model itself answers >= 50 built-in multi-turn chats (greedy and sampled, 200-4000
   tokens each, ChatML). Chunks = turns (a turn's new tokens, split at --chunk-max).
2. Bits per value of the BF16 K/V (K after RoPE) — raw BF16 (16), zstd -19 of the raw-bf16 payload (every
   --zstd-every-th transcript: zstd -19 runs at ~3 MB/s a core),
   exponent-only entropy (sign+mantissa raw, exponent at its empirical entropy: DFloat11/ZipNN-style
   ideal), spec-v1 baseline model (a) and improved model (b) against the speculator — and the same for
   an FP8 cache (e4m3 + one power-of-two scale per row; raw = 8 + 8/head_dim). Every coded chunk is
   decoded and compared bit for bit (a mismatch aborts). By layer: OUT_layers.csv.
3. Predictor variants on --variant-transcripts transcripts spread over the set: w8a8 (the design's predictor),
   w8a8-kv, w8a8-kvx (default), and emulated w8a16-kvx / w8a8blk32-kvx (unquantized activations /
   weight scales per 32 inputs; float GEMMs, bits only).
4. Predictor cost (CUDA): prefill time of the BF16 model vs the FP8 speculator (w8a8, w8a8-kvx; exact
   K/V supplied as an encoder has them) for SmolLM2 and random llama3-8b weights at 512/4096/16384 tokens.
Output: OUT.jsonl (one record per measurement), OUT.md (tables), OUT_layers.csv, OUT_chunks.jsonl (per chunk);
the tables are printed last.

Sections 1-3 run in two phases so a long run fits time-limited machines: the GPU writes transcripts, K/V
and predictions to --work (default OUT_work), then CPU workers code chunk by chunk, appending to
WORK/chunks.jsonl. With --time-budget a run stops starting chunks after that many seconds and prints
partial tables; running again with the same --work codes only what is missing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from reprise_gpu.codec.fp8cache import Fp8Kv, quantize_fp8  # noqa: E402
from reprise_gpu.codec.spec import FixedPredictions, decode_chunk, encode_chunk  # noqa: E402
from reprise_gpu.config import Config, get_model_args, smollm2_gguf_path  # noqa: E402
from reprise_gpu.gguf_loader import load_gguf, random_state_dict  # noqa: E402
from reprise_gpu.models.llama import AttnMetadata, alloc_kv_cache, build_model  # noqa: E402
from reprise_gpu.speculator.model import SeqInput, Speculator  # noqa: E402
from reprise_gpu.speculator.quantize import create_quantized_state_dict  # noqa: E402
from reprise_gpu.speculator.recipe import get_recipe  # noqa: E402
from reprise_gpu.speculator.target import target_kv  # noqa: E402

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
PROMPTS = [
    "Explain how vaccines train the immune system.", "Write a short poem about autumn rain in a city.",
    "What are the main causes of inflation?", "Give me a recipe for a simple vegetable soup.",
    "How does a binary search work? Show Python code.", "Summarize the plot of Romeo and Juliet.",
    "What is the difference between weather and climate?", "Suggest five names for a coffee shop by the sea.",
    "How do I change a flat tire?", "Explain photosynthesis to a ten-year-old.",
    "Write a SQL query that finds the top 3 customers by total order value.", "What is a black hole?",
    "Compare trains and planes for a 500 km trip.", "Draft a polite email asking for a deadline extension.",
    "Why do cats purr?", "Translate 'good morning, how are you?' into French, Spanish and German.",
    "What are prime numbers? List the first ten.", "Describe the water cycle.",
    "Give tips for a first job interview.", "Explain what a neural network is.",
    "Write a haiku about the moon.", "What happened during the French Revolution?",
    "How can I improve my sleep?", "Explain recursion with an example in JavaScript.",
    "What is the Pythagorean theorem? Give a worked example.", "Plan a three-day trip to Rome.",
    "What are the benefits of regular exercise?", "Tell me a short story about a lost robot.",
    "How does compound interest work?", "Explain the rules of chess briefly.",
    "What is the capital of Australia and why is it not Sydney?", "How do solar panels produce electricity?",
    "Write a limerick about a programmer.", "What is the difference between a virus and a bacterium?",
    "Give me a weekly meal plan for a vegetarian.", "Explain how HTTP cookies work.",
    "What are the planets of the solar system?", "How do I write a good cover letter?",
    "Explain supply and demand.", "Write a Python function that reverses a linked list.",
    "Why is the ocean salty?", "What is mindfulness meditation?", "Describe how a bill becomes a law.",
    "Explain the greenhouse effect.", "How do airplanes stay in the air?", "List ten fun facts about octopuses.",
    "What is the difference between RAM and storage?", "Write a motivational speech for a sports team.",
    "Explain the basics of git branching.", "How are rainbows formed?", "What is a healthy breakfast?",
    "Explain the difference between TCP and UDP.", "Give me a riddle and its answer.",
    "How does the stock market work?", "What should I pack for a camping trip?",
]
FOLLOWUPS = ["Can you explain that in more detail?", "Give me an example.", "Summarize that in three bullet points.",
             "What are the most common mistakes?", "How would you explain it to a child?", "Thanks! One more question: why?",
             "Can you make it shorter?", "What are the pros and cons?"]


def chatml(tok, msgs: list[tuple[str, str]], gen_prompt: bool) -> list[int]:
    text = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n" + "".join(f"<|im_start|>{r}\n{c}<|im_end|>\n" for r, c in msgs)
    return encode(tok, text + ("<|im_start|>assistant\n" if gen_prompt else ""))


def encode(tok, text: str) -> list[int]:
    if hasattr(tok, "encode"):
        return tok.encode(text).ids
    return list(text.encode("utf-8"))           # byte tokenizer of the tiny preset


def make_transcripts(engine, tok, n: int, max_tokens: int, rng: np.random.Generator, reply_tokens: int,
                     min_tokens: int = 200):
    """Multi-turn chats; -> [{ids, turns: [(start, end) of each turn's new tokens]}]."""
    from reprise_gpu.engine.sampling import SamplingParams
    convs = []
    for i in range(n):
        target = int(rng.integers(min(min_tokens, max_tokens), max_tokens + 1))
        convs.append({"msgs": [("user", PROMPTS[i % len(PROMPTS)])], "target": target, "done": False, "ids": [],
                      "turns": [], "greedy": i % 2 == 0})
    for turn in range(12):
        live = [c for c in convs if not c["done"]]
        if not live:
            break
        prompts = [chatml(tok, c["msgs"], True) for c in live]
        params = [SamplingParams(max_tokens=min(reply_tokens, max(16, c["target"] - len(p))), temperature=0 if c["greedy"] else 0.8,
                                 top_p=0.95, seed=turn * 1000 + k) for k, (c, p) in enumerate(zip(live, prompts))]
        outs = engine.generate(prompts, params)
        for c, p, o in zip(live, prompts, outs):
            c["msgs"].append(("assistant", o["text"].strip() or "OK."))
            ids = chatml(tok, c["msgs"], False)
            if len(ids) >= c["target"] or len(ids) + 64 > max_tokens:
                c["done"] = True
            else:
                c["msgs"].append(("user", FOLLOWUPS[int(rng.integers(len(FOLLOWUPS)))]))
                ids = chatml(tok, c["msgs"], False)
            c["turns"].append((len(c["ids"]), len(ids)))
            c["ids"] = ids
    return [{"ids": c["ids"], "turns": [t for t in c["turns"] if t[1] > t[0]]} for c in convs]


def chunks_of(turns, chunk_max: int):
    for a, b in turns:
        for s in range(a, b, chunk_max):
            yield s, min(b, s + chunk_max)


# ---- coding jobs (worker processes) ------------------------------------------------------------------

def exponent_entropy_bits(bits: np.ndarray, ebits: int, mbits: int) -> float:
    """Ideal exponent-only coding: sign+mantissa raw, exponent at its empirical entropy (+ 8-bit table)."""
    e = (bits.astype(np.int64) >> mbits) & ((1 << ebits) - 1)
    cnt = np.bincount(e.reshape(-1), minlength=1 << ebits)
    p = cnt[cnt > 0] / e.size
    return float(e.size * (1 + mbits - (p * np.log2(p)).sum()) + 8 * (1 << ebits))


def load_job(job: dict) -> dict:
    """Slice a job's arrays out of the transcript files the prepare step wrote (memory-mapped: workers
    read only their chunk, and nothing large crosses the process boundary)."""
    d, s, e = job["dir"], job["start"], job["end"]

    def part(name):
        return np.ascontiguousarray(np.load(os.path.join(d, name + ".npy"), mmap_mode="r")[:, :, :, s:e])

    out = {"bf16": part("bf16"), "pred": part(job["pred_file"])}
    if job.get("fp8"):
        out["fp8"] = Fp8Kv(part("fp8_codes"), part("fp8_exps"))
        out["pred_fp8"] = part("pred_fp8")
    return out


def code_job(job: dict) -> dict:
    import zstandard
    arrays = load_job(job)
    out = {"key": job["key"], "values": int(arrays["bf16"].size)}
    bf16, pred = arrays["bf16"], arrays["pred"]
    if job.get("baselines"):
        out["exp_bf16"] = exponent_entropy_bits(bf16, 8, 7)
    if job.get("zstd"):
        out["zstd_bf16"] = 8 * len(zstandard.ZstdCompressor(level=19).compress(bf16.astype("<u2").tobytes()))
    targets = {"bf16": bf16}
    if "fp8" in arrays:
        q = arrays["fp8"]
        targets["fp8"] = q
        if job.get("baselines"):
            out["exp_fp8"] = exponent_entropy_bits(q.codes, 4, 3) + 8 * q.exps.size
        if job.get("zstd"):
            raw = q.codes.tobytes() + q.exps.astype(np.int8).tobytes()
            out["zstd_fp8"] = 8 * len(zstandard.ZstdCompressor(level=19).compress(raw))
    L, _, KH, T, D = bf16.shape
    t0 = time.time()
    for mode, target in targets.items():
        p = arrays["pred_fp8"] if mode == "fp8" else pred
        for model in job["models"]:
            stats = {}
            data = encode_chunk(target, p, fingerprint=job["fingerprint"], token_start=job["start"], model=model,
                                stats=stats)
            res = decode_chunk(data, FixedPredictions(p), fingerprint=job["fingerprint"], layers=L, kv_heads=KH,
                               head_dim=D, token_start=job["start"], token_end=job["start"] + T)
            same = res.ok and (np.array_equal(res.values.codes, target.codes) and np.array_equal(res.values.exps, target.exps)
                               if mode == "fp8" else np.array_equal(res.values, target))
            if not same:
                raise RuntimeError(f"round trip failed: {job['key']} {mode} {model}: {res.status.name} {res.message}")
            out[f"spec_{mode}_{model}"] = 8 * len(data)
            out[f"layers_{mode}_{model}"] = stats["segment_bits"]
    out["coding_seconds"] = time.time() - t0
    return out


# ---- predictions ---------------------------------------------------------------------------------------

class EmulatedOps:
    """Bits-only variants on top of a real ops module: unquantized activations (W8A16) and/or weights
    with one FP8 scale per 32 inputs. Float GEMMs: neither fast nor batch-invariant."""

    def __init__(self, base, a16: bool, blk_weights: dict | None):
        self.base, self.a16, self.blk = base, a16, blk_weights or {}
        self.rope, self.KVStore, self.ATTN_DTYPE = base.rope, base.KVStore, base.ATTN_DTYPE
        from reprise_gpu.speculator import cpu_ops
        self.cpu = cpu_ops

    def norm_quant(self, h, g, eps, split):
        if not self.a16:
            return self.base.norm_quant(h, g, eps, split)
        n, rms = self.cpu.rms_norm(h, g, eps)
        return (n, None), ((torch.zeros_like(n), None) if split else None), rms

    def quant_rows(self, x):
        return (x.float(), None) if self.a16 else self.base.quant_rows(x)

    def silu_mul_quant(self, gu, F):
        if not self.a16:
            return self.base.silu_mul_quant(gu, F)
        g, u = gu[:, :F].float(), gu[:, F:].float()
        return g / (1 + torch.exp(-g)) * u, None

    def _w(self, w, sw):
        return self.blk.get(id(w), None) if id(w) in self.blk else w.float() * sw[:, None]

    def linear(self, xq, w, sw, wide=False, fast=False):
        x = xq[0].float() if xq[1] is None else xq[0].float() * xq[1][:, None]
        return x @ self._w(w, sw).T

    def kv_split_linear(self, xq, dq, w, sw, r, sr, fast=False):
        x = xq[0].float() if xq[1] is None else xq[0].float() * xq[1][:, None] + dq[0].float() * dq[1][:, None]
        return x @ (w.float() * sw[:, None] + r.float() * sr[:, None]).T


def block_dequant(w: torch.Tensor, block: int = 32) -> torch.Tensor:
    o, i = w.shape
    wb = w.float().view(o, i // block, block)
    s = (wb.abs().amax(-1, keepdim=True) / 448).clamp(min=1e-30)
    return ((wb / s).clamp(-448, 448).to(torch.float8_e4m3fn).float() * s).view(o, i)


def make_speculator(name: str, sd, args, device) -> Speculator:
    base = {"w8a16-kvx": "w8a8-kvx", "w8a8blk32-kvx": "w8a8-kvx"}.get(name, name)
    spec = Speculator(create_quantized_state_dict(sd, args, get_recipe(base), device=device), device=device)
    if name != base:
        blk = {}
        if name == "w8a8blk32-kvx":
            for i, lw in enumerate(spec.w.layers):
                p = f"layers.{i}."
                qkv = sd[p + "self_attn.qkv_proj.weight"].to(device)
                for key, src in (("q", qkv[: args.q_size]), ("o", sd[p + "self_attn.o_proj.weight"]),
                                 ("gate_up", sd[p + "mlp.gate_up_proj.weight"]), ("down", sd[p + "mlp.down_proj.weight"])):
                    blk[id(lw[key])] = block_dequant(src.to(device))
        spec.ops = EmulatedOps(spec.ops, a16=name == "w8a16-kvx", blk_weights=blk)
        spec.fingerprint += f";emulated={name}"
    return spec


@torch.no_grad()
def predictions(spec: Speculator, ids: torch.Tensor, exact: torch.Tensor, fp8: bool, spans) -> np.ndarray:
    """What a session's decoder reproduces: one speculator call per chunk [s, e), its past the stored
    values of [0, s) (BF16: the exact cache; FP8 cache: the FP8 values, not the observations an earlier
    call made of them, which differ: a whole-transcript call gave FP8 predictions the chunk-wise decoder
    refused, issue 9)."""
    out = []
    for s, e in spans:
        past = exact[:, :, :, :s] if s else None
        out.append(spec.predict_all([SeqInput(ids[s:e], s, past)], [exact[:, :, :, s:e]], fp8_cache=fp8)[0])
    return torch.cat(out, dim=3).cpu().numpy()


# ---- timing ------------------------------------------------------------------------------------------------

def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def prefill_passes(sd, args, T: int, dev, recipes):
    """Yields (name, backend, fn): fn runs one T-token prefill, first of the BF16 model ("bf16"), then of
    the speculator of each recipe with the exact K/V supplied as an encoder has them. Run each fn before
    asking for the next pass: the speculators read the K/V the BF16 pass left, after the model is freed."""
    model = build_model(args, sd)
    ids = torch.randint(0, args.vocab_size, (T,), device=dev, generator=torch.Generator(device=dev).manual_seed(T))
    bs = 16
    nb = -(-T // bs)
    cache = alloc_kv_cache(args, nb, bs, torch.bfloat16, dev)
    attn = AttnMetadata.build([T], [T], [list(range(nb))], bs, device=dev)
    pos = torch.arange(T, device=dev)
    yield "bf16", None, lambda: model(ids, pos, attn, cache)
    from reprise_gpu.engine.kv_io import gather_kv
    exact = gather_kv(cache, list(range(nb)), 0, T)                            # [L, 2, KH, T, D] bf16
    del model
    for rec in recipes:
        spec = Speculator(create_quantized_state_dict(sd, args, get_recipe(rec), device=dev, hash_weights=False),
                          device=dev)

        def fp8():
            run = spec.start([SeqInput(ids, 0)])
            for layer in range(args.n_layers):
                run.predict(layer)
                run.observe(layer, [exact[layer]])

        yield rec, spec.fingerprint.split("backend=")[1].split(";")[0], fp8
        del spec


@torch.no_grad()
def time_prefill(name: str, sd, args, T: int, dev, recipes, reps: int) -> list[dict]:
    def timeit(fn):
        fn()
        sync(dev)
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            sync(dev)
            ts.append(time.perf_counter() - t)
        return float(np.median(ts))

    rows = []
    for predictor, backend, fn in prefill_passes(sd, args, T, dev, recipes):
        rows.append({"section": "cost", "model": name, "tokens": T, "predictor": predictor, "ms": 1e3 * timeit(fn),
                     **({"backend": backend} if backend else {})})
    base = rows[0]["ms"]
    for r in rows:
        r["vs_bf16"] = r["ms"] / base
    return rows


# ---- prepare (GPU) and code (CPU workers) ----------------------------------------------------------------

VARIANTS = ["w8a8", "w8a8-kv", "w8a8-kvx", "w8a16-kvx", "w8a8blk32-kvx"]


def prepare(work, a, name, args, sd, tok, dev, rng, n_tr, max_tokens, n_var, smoke, emit) -> dict:
    """Transcripts, their exact K/V and every predictor's predictions, saved under `work` as .npy per
    transcript; -> the manifest. A second run with the same `work` loads the manifest instead (the
    manifest is written last, so an interrupted prepare is simply redone)."""
    path = os.path.join(work, "manifest.json")
    if os.path.exists(path):
        with open(path) as f:
            man = json.load(f)
        emit({"section": "prepare", "reused": path})
        return man
    from reprise_gpu.engine.llm_engine import LLMEngine
    os.makedirs(work, exist_ok=True)
    model = build_model(args, sd)
    cfg = Config(model=name, device=str(dev), num_kv_blocks=max(512, n_tr * max_tokens // 16 + 64),
                 max_num_seqs=min(64, n_tr), max_num_batched_tokens=8192 if not smoke else 512,
                 prefill_chunk_size=2048 if not smoke else 256, gguf_path=None if smoke else smollm2_gguf_path())
    engine = LLMEngine(cfg, model=model, tokenizer=tok, cuda_graphs=dev.type == "cuda")
    t0 = time.time()
    trs = make_transcripts(engine, engine.tokenizer if tok is None else tok, n_tr, max_tokens, rng,
                           reply_tokens=64 if smoke else 600, min_tokens=80 if smoke else 200)
    del engine
    emit({"section": "transcripts", "n": len(trs), "tokens": [len(t["ids"]) for t in trs],
          "turns": [len(t["turns"]) for t in trs], "seconds": time.time() - t0})
    spec = Speculator(create_quantized_state_dict(sd, args, get_recipe("w8a8-kvx"), device=dev), device=dev)
    spec8 = Speculator(create_quantized_state_dict(sd, args, get_recipe("w8a8-kvx-fp8"), device=dev), device=dev)
    var_idx = sorted({int(round(i)) for i in np.linspace(0, len(trs) - 1, n_var)}) if n_var else []
    variants = {}
    for vname in VARIANTS:
        try:
            variants[vname] = make_speculator(vname, sd, args, dev)
        except Exception as ex:  # an emulated variant must not sink the run
            emit({"section": "variants", "variant": vname, "error": repr(ex)})
    t0 = time.time()
    man = {"fingerprint": spec.fingerprint, "variant_fingerprints": {k: v.fingerprint for k, v in variants.items()},
           "transcripts": []}
    for ti, tr in enumerate(trs):
        d = os.path.join(work, f"t{ti:03d}")
        os.makedirs(d, exist_ok=True)
        ids = torch.tensor(tr["ids"], device=dev)
        kv = target_kv(model, ids)                                            # [L, 2, KH, T, D] bf16
        fp8 = quantize_fp8(kv.float().cpu().numpy())
        np.save(os.path.join(d, "ids.npy"), np.asarray(tr["ids"], np.int64))
        np.save(os.path.join(d, "bf16.npy"), kv.view(torch.int16).cpu().numpy().view(np.uint16))
        np.save(os.path.join(d, "fp8_codes.npy"), fp8.codes)
        np.save(os.path.join(d, "fp8_exps.npy"), fp8.exps)
        spans = list(chunks_of(tr["turns"], a.chunk_max))
        if [s0 for s0, _ in spans] != [0] + [e0 for _, e0 in spans[:-1]] or spans[-1][1] != len(tr["ids"]):
            raise RuntimeError(f"transcript {ti}: turns do not cover its tokens in order: {spans[:4]}...")
        np.save(os.path.join(d, "pred.npy"), predictions(spec, ids, kv.float(), False, spans))
        np.save(os.path.join(d, "pred_fp8.npy"), predictions(spec8, ids, torch.from_numpy(fp8.values()).to(dev), True,
                                                             spans))
        names = []
        if ti in var_idx:
            for vname, vs in variants.items():
                np.save(os.path.join(d, f"pred_{vname}.npy"), predictions(vs, ids, kv.float(), False, spans))
                names.append(vname)
        man["transcripts"].append({"dir": d, "tokens": len(tr["ids"]), "turns": tr["turns"], "variants": names})
    emit({"section": "predictions", "seconds": time.time() - t0, "variant_transcripts": var_idx})
    with open(path + ".tmp", "w") as f:
        json.dump(man, f)
    os.replace(path + ".tmp", path)
    return man


def make_jobs(man: dict, sections, chunk_max: int, zstd_every: int) -> list[dict]:
    """One job per chunk (a turn's new tokens, split at chunk_max), biggest first for load balance."""
    jobs = []
    for ti, tr in enumerate(man["transcripts"]):
        for s, e in chunks_of(tr["turns"], chunk_max):
            base = {"dir": tr["dir"], "start": s, "end": e, "values_hint": e - s}
            if "bits" in sections:
                jobs.append({**base, "key": ["bits", ti, s], "pred_file": "pred", "fp8": True,
                             "fingerprint": man["fingerprint"], "models": ["baseline", "improved"],
                             "baselines": True, "zstd": ti % zstd_every == 0})
            if "variants" in sections:
                for v in tr["variants"]:
                    jobs.append({**base, "key": ["variant", v, ti, s], "pred_file": f"pred_{v}", "fp8": False,
                                 "fingerprint": man["variant_fingerprints"][v], "models": ["improved"]})
    return sorted(jobs, key=lambda j: -j["values_hint"])


def run_jobs(jobs: list[dict], work: str, a, on_progress) -> tuple[list[dict], bool]:
    """Code the jobs not yet in work/chunks.jsonl, stopping new ones after --time-budget seconds.
    -> (all results so far, whether every job is done). Each result is appended to the log as it comes."""
    log = os.path.join(work, "chunks.jsonl")
    done = {}
    if os.path.exists(log):
        with open(log) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    done[json.dumps(r["key"])] = r
    results = [done[json.dumps(j["key"])] for j in jobs if json.dumps(j["key"]) in done]
    todo = [j for j in jobs if json.dumps(j["key"]) not in done]
    deadline = time.time() + (math.inf if a.time_budget is None else a.time_budget)   # 0: prepare only
    t0 = time.time()

    def record(res):
        results.append(res)
        with open(log, "a") as f:
            f.write(json.dumps(res) + "\n")
        if len(results) % 20 == 0:
            on_progress(results, f"partial: {len(results)}/{len(jobs)} chunks coded")
            print(f"  {len(results)}/{len(jobs)} chunks, {time.time() - t0:.0f} s", flush=True)

    it = iter(todo)
    if a.workers > 1:
        import multiprocessing as mp
        with ProcessPoolExecutor(a.workers, mp_context=mp.get_context("spawn")) as ex:
            pending = set()
            while True:
                while len(pending) < 2 * a.workers and time.time() < deadline:
                    j = next(it, None)
                    if j is None:
                        break
                    pending.add(ex.submit(code_job, j))
                if not pending:
                    break
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    record(fut.result())
    else:
        for j in it:
            if time.time() >= deadline:
                break
            record(code_job(j))
    print(f"coded {len(results) - (len(jobs) - len(todo))} chunks in {time.time() - t0:.0f} s "
          f"({len(results)}/{len(jobs)} done)", flush=True)
    return results, len(results) == len(jobs)


# ---- main --------------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="output path prefix: OUT.jsonl, OUT.md, OUT_layers.csv")
    ap.add_argument("--smoke", action="store_true", help="tiny preset on the CPU")
    ap.add_argument("--transcripts", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--chunk-max", type=int, default=1024)
    ap.add_argument("--variant-transcripts", type=int, default=None)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--sections", nargs="+", default=["bits", "variants", "cost"])
    ap.add_argument("--cost-tokens", type=int, nargs="+", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="directory for transcripts, K/V and predictions (default OUT_work); "
                    "reused by a later run, which codes only the chunks not yet in WORK/chunks.jsonl")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="stop starting new chunks after this many seconds of coding (finish with another run)")
    ap.add_argument("--zstd-every", type=int, default=None,
                    help="zstd -19 (slow: ~3 MB/s a core) on every n-th transcript's chunks (default 2; 1 in --smoke)")
    a = ap.parse_args(argv)
    smoke = a.smoke
    dev = torch.device("cpu" if smoke or not torch.cuda.is_available() else "cuda")
    n_tr = a.transcripts or (3 if smoke else 50)
    max_tokens = a.max_tokens or (160 if smoke else 4000)
    a.zstd_every = a.zstd_every or (1 if smoke else 2)
    n_var = a.variant_transcripts if a.variant_transcripts is not None else (1 if smoke else 5)
    rng = np.random.default_rng(a.seed)
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "argv": sys.argv[1:] if argv is None else argv}
    records: list[dict] = []

    def emit(rec):
        rec = {**rec, **({"meta": meta} if not records else {})}
        records.append(rec)
        with open(a.out + ".jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")

    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    open(a.out + ".jsonl", "w").close()
    name = "tiny" if smoke else "smollm2-135m"
    args = get_model_args(name)
    if smoke:
        sd = random_state_dict(args, seed=0, device=dev)
        tok = None
    else:
        args, sd = load_gguf(smollm2_gguf_path(), dtype=torch.bfloat16, device=dev)
        from reprise_gpu.engine.detokenizer import tokenizer_from_gguf
        tok = tokenizer_from_gguf(smollm2_gguf_path())
    tables = {}
    if "bits" in a.sections or "variants" in a.sections:
        work = a.work or a.out + "_work"
        man = prepare(work, a, name, args, sd, tok, dev, rng, n_tr, max_tokens, n_var, smoke, emit)
        jobs = make_jobs(man, a.sections, a.chunk_max, a.zstd_every)
        results, complete = run_jobs(jobs, work, a, lambda rs, note: write_md(
            meta, summarize(rs, args, a.out, lambda r: None), a.out, note=note))
        tables = summarize(results, args, a.out, emit)
        if not complete:
            tables = {"PARTIAL": f"{len(results)} of {len(jobs)} chunks coded so far (run again with the same --work "
                                 "to finish)\n", **tables}
        with open(a.out + "_chunks.jsonl", "w") as f:
            for r in results:
                f.write(json.dumps({k: v for k, v in r.items() if not k.startswith("layers_")}) + "\n")
    if "cost" in a.sections and (dev.type == "cuda" or smoke):
        sizes = a.cost_tokens or ([16, 64] if smoke else [512, 4096, 16384])
        cost_models = [(name, args, sd)]
        if not smoke:
            big = get_model_args("llama3-8b", max_seq_len=max(sizes) + 16)
            cost_models.append(("llama3-8b", big, None))
        rows = []
        for mname, margs, msd in cost_models:
            if msd is None:
                msd = random_state_dict(margs, seed=0, device=dev)
            margs = get_model_args(mname if mname != "smollm2-135m" else "smollm2-135m",
                                   max_seq_len=max(sizes) + 16) if not smoke else margs
            for T in sizes:
                try:
                    for r in time_prefill(mname, msd, margs, T, dev, ["w8a8", "w8a8-kvx"], reps=2 if smoke else 5):
                        emit(r)
                        rows.append(r)
                except Exception as ex:
                    emit({"section": "cost", "model": mname, "tokens": T, "error": repr(ex)})
            del msd
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        tables["cost"] = "| model | tokens | predictor | ms | x BF16 |\n| --- | --- | --- | --- | --- |\n" + "".join(
            f"| {r['model']} | {r['tokens']} | {r['predictor']} | {r['ms']:.2f} | {r['vs_bf16']:.3f} |\n" for r in rows)
    print(write_md(meta, tables, a.out))


def write_md(meta, tables, out, note="") -> str:
    md = (f"# KV codec benchmark\n\n{json.dumps(meta)}\n\n" + (f"**{note}**\n\n" if note else "")
          + "\n".join(f"## {k}\n\n{v}" for k, v in tables.items()))
    with open(out + ".md", "w") as f:
        f.write(md)
    return md


def summarize(results, args, out, emit) -> dict[str, str]:
    """Aggregate bits per value; write the per-layer CSV; -> markdown tables."""
    L = args.n_layers
    bits = [r for r in results if r["key"][0] == "bits"]
    var = [r for r in results if r["key"][0] == "variant"]
    tables = {}
    if bits:
        n = sum(r["values"] for r in bits)
        head_dim = args.head_dim

        def tot(k):
            have = [r for r in bits if k in r]
            return sum(r[k] for r in have) / max(1, sum(r["values"] for r in have))

        lay = {}
        for mode in ("bf16", "fp8"):
            for model in ("baseline", "improved"):
                acc = np.zeros((L, 2))
                for r in bits:
                    acc += np.array(r[f"layers_{mode}_{model}"])
                lay[(mode, model)] = acc / (n / (2 * L))          # values per segment summed over chunks
        nz = sum(1 for r in bits if "zstd_bf16" in r)
        rows = [("raw BF16", 16.0, 16.0, 16.0), (f"zstd -19 (BF16; {nz} of {len(bits)} chunks)", tot("zstd_bf16"), None, None),
                ("exponent-only entropy (BF16)", tot("exp_bf16"), None, None)]
        for model, label in (("baseline", "spec-v1 baseline (a)"), ("improved", "spec-v1 improved (b)")):
            kv = lay[("bf16", model)]
            rows.append((label + " BF16", tot(f"spec_bf16_{model}"), kv[:, 0].mean(), kv[:, 1].mean()))
        raw8 = 8 + 8 / head_dim
        rows += [("raw FP8 (+ row scales)", raw8, raw8, raw8), (f"zstd -19 (FP8; {nz} of {len(bits)} chunks)", tot("zstd_fp8"), None, None),
                 ("exponent-only entropy (FP8)", tot("exp_fp8"), None, None)]
        for model, label in (("baseline", "spec-v1 baseline (a)"), ("improved", "spec-v1 improved (b)")):
            kv = lay[("fp8", model)]
            rows.append((label + " FP8", tot(f"spec_fp8_{model}"), kv[:, 0].mean(), kv[:, 1].mean()))
        for name, all_, k, v in rows:
            emit({"section": "bits", "codec": name, "bits_per_value": all_, "K": k, "V": v, "values": n})
        fmt = lambda x: "" if x is None else f"{x:.3f}"  # noqa: E731
        tables["bits per value (K and V: stream size without header, states)"] = (
            f"{n} values, {len(bits)} chunks\n\n| codec | K+V | K | V |\n| --- | --- | --- | --- |\n"
            + "".join(f"| {name} | {fmt(x)} | {fmt(k)} | {fmt(v)} |\n" for name, x, k, v in rows))
        with open(out + "_layers.csv", "w") as f:
            f.write("layer," + ",".join(f"{m}_{mo}_{kv}" for m in ("bf16", "fp8") for mo in ("baseline", "improved")
                                        for kv in ("K", "V")) + "\n")
            for layer in range(L):
                f.write(f"{layer}," + ",".join(f"{lay[(m, mo)][layer, j]:.4f}" for m in ("bf16", "fp8")
                                               for mo in ("baseline", "improved") for j in (0, 1)) + "\n")
    if var:
        names = sorted({r["key"][1] for r in var})
        lines = []
        for v in names:
            rs = [r for r in var if r["key"][1] == v]
            bpv = sum(r["spec_bf16_improved"] for r in rs) / sum(r["values"] for r in rs)
            emit({"section": "variants", "variant": v, "bits_per_value": bpv, "values": sum(r["values"] for r in rs)})
            lines.append(f"| {v} | {bpv:.3f} |\n")
        tables["predictor variants (BF16, model b)"] = "| predictor | bits/value |\n| --- | --- |\n" + "".join(lines)
    return tables


if __name__ == "__main__":
    main()
