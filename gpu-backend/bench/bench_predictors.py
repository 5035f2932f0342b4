"""Bits against cost for the speculator's recipes, every bits figure from chunks the real decoder restores.

    python bench/bench_predictors.py OUT --section cost [--tokens 4096 16384] [--recipes ...]   # random weights
    python bench/bench_predictors.py OUT --section bits [--transcripts 8] [--recipes ...]       # SmolLM2 GGUF

cost: one prefill of T tokens, the BF16 model vs each recipe's speculator (exact K/V supplied as an encoder
      has it), wall time (median of --reps), at the llama3-8b and SmolLM2 shapes (bench_kv_codec.time_prefill).
bits: SmolLM2 answers built-in chats (bench_kv_codec.make_transcripts); each turn (split at 1024 tokens)
      is a chunk, coded as a session does it: the encoder's speculator call covers the chunk with the
      stored values of every earlier token as its past (BF16: the exact cache; FP8 cache: its FP8 values),
      the GPU coder writes spec-v2, and the chunk is then decoded by a fresh speculator run inside the GPU
      decoder (SpeculatorPredictor, layer by layer), as a resume does. Bits count only chunks that decode
      to the exact target; failures are counted and reported. For two chunks per mode the NumPy
      reference also decodes the GPU's bytes and encodes the same bytes (real SmolLM2 KV, both ways).
Output: OUT/predictors.jsonl; a table last.
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kv_codec import chunks_of, make_transcripts, time_prefill  # noqa: E402
from reprise_gpu.codec import gpu  # noqa: E402
from reprise_gpu.codec.fp8cache import quantize_fp8  # noqa: E402
from reprise_gpu.codec.spec import FixedPredictions  # noqa: E402
from reprise_gpu.codec.spec2 import decode_chunk_v2, encode_chunk_v2  # noqa: E402
from reprise_gpu.config import Config, get_model_args, smollm2_gguf_path  # noqa: E402
from reprise_gpu.gguf_loader import load_gguf, random_state_dict  # noqa: E402
from reprise_gpu.models.llama import build_model  # noqa: E402
from reprise_gpu.speculator.model import SeqInput, Speculator, SpeculatorPredictor  # noqa: E402
from reprise_gpu.speculator.quantize import create_quantized_state_dict  # noqa: E402
from reprise_gpu.speculator.recipe import get_recipe  # noqa: E402
from reprise_gpu.speculator.target import target_kv  # noqa: E402

RECIPES = ["w8a8", "w8a8-fast", "w8a8-win1024", "w8a8-win512", "w8a8-kv", "w8a8-kv-win1024", "w8a8-kvx",
           "w8a8-kvx-fast", "w8a8-kvx-win1024", "w8a8-kvx-win512"]


def speculator(sd, args, recipe: str, fp8: bool, dev) -> Speculator:
    r = get_recipe(recipe)
    if fp8 and r.correction:
        r = get_recipe(recipe, correction_ridge=0.1)      # FP8 caches: the damped correction (w8a8-kvx-fp8)
    return Speculator(create_quantized_state_dict(sd, args, r, device=dev), device=dev)


@torch.no_grad()
def code_transcript(spec: Speculator, ids, kv_bf16, fp8: bool, spans, cross: int):
    """-> (bits, values, failures, cross-checks) of one transcript's chunks, each decoded by a fresh run."""
    a = spec.args
    if fp8:
        q = quantize_fp8(kv_bf16.float().cpu().numpy())
        stored = torch.from_numpy(q.values()).to(kv_bf16.device)
        codes, exps = torch.from_numpy(q.codes).to(kv_bf16.device), torch.from_numpy(q.exps).to(kv_bf16.device)
    else:
        stored = kv_bf16.float()
    bits = values = fails = 0
    checks = []
    for s, e in spans:
        past = stored[:, :, :, :s] if s else None
        pred = spec.predict_all([SeqInput(ids[s:e], s, past)], [stored[:, :, :, s:e]], fp8_cache=fp8)[0]
        target = (codes[:, :, :, s:e].contiguous(), exps[:, :, :, s:e].contiguous()) if fp8 else \
            kv_bf16[:, :, :, s:e].contiguous().view(torch.int16)
        data = gpu.encode_v2(target, pred, fingerprint=spec.fingerprint, token_start=s)
        run = spec.start([SeqInput(ids[s:e], s, past)])
        shape = dict(fingerprint=spec.fingerprint, layers=a.n_layers, kv_heads=a.n_kv_heads, head_dim=a.head_dim,
                     token_start=s, token_end=e)
        res = gpu.decode_v2(data, SpeculatorPredictor(run, fp8_cache=fp8, tensors=True), device=spec.device, **shape)
        same = res.ok and (torch.equal(res.values[0], target[0]) and torch.equal(res.values[1].int(), target[1].int())
                           if fp8 else torch.equal(res.values, target))
        if not same:
            fails += 1
            continue
        bits += 8 * len(data)
        values += target[0].numel() if fp8 else target.numel()
        if len(checks) < cross:               # the NumPy reference on real KV, both ways
            pn = pred.cpu().numpy()
            if fp8:
                from reprise_gpu.codec.fp8cache import Fp8Kv
                tn = Fp8Kv(target[0].cpu().numpy(), target[1].cpu().numpy())
            else:
                tn = target.cpu().numpy().view(np.uint16)
            ref = encode_chunk_v2(tn, pn, fingerprint=spec.fingerprint, token_start=s)
            back = decode_chunk_v2(data, FixedPredictions(pn), **shape)
            checks.append(dict(numpy_same_bytes=ref == data, numpy_decodes_gpu_bytes=back.ok))
    return bits, values, fails, checks


def run_bits(a, dev, emit):
    from reprise_gpu.engine.llm_engine import LLMEngine
    path = smollm2_gguf_path()
    args = get_model_args("smollm2-135m")
    _, sd = load_gguf(path, dtype=torch.bfloat16, device=dev)
    model = build_model(args, sd)
    eng = LLMEngine(Config(model="smollm2-135m", device=str(dev), num_kv_blocks=4096, max_num_seqs=16,
                           max_num_batched_tokens=8192, prefill_chunk_size=2048), model=model, cuda_graphs=True)
    t0 = time.time()
    trs = make_transcripts(eng, eng.tokenizer, a.transcripts, 4000, np.random.default_rng(a.seed), reply_tokens=600,
                           min_tokens=200)
    del eng
    emit(dict(section="transcripts", n=len(trs), tokens=[len(t["ids"]) for t in trs], seconds=time.time() - t0))
    kvs = []
    for t in trs:
        spans = list(chunks_of(t["turns"], 1024))
        if not spans or [s for s, _ in spans] != [0] + [e for _, e in spans[:-1]] or spans[-1][1] != len(t["ids"]):
            emit(dict(section="transcripts", skipped="turns do not cover the tokens in order"))
            continue
        ids = torch.tensor(t["ids"], device=dev)
        kvs.append((ids, target_kv(model, ids), spans))
    out = []
    for recipe in a.recipes:
        for fp8 in (False, True):
            spec = speculator(sd, args, recipe, fp8, dev)
            t0 = time.time()
            tot = [0, 0, 0]
            checks = []
            for ids, kv, spans in kvs:
                b, v, f, c = code_transcript(spec, ids, kv, fp8, spans, cross=2 - len(checks) if recipe == "w8a8-kvx" else 0)
                tot = [tot[0] + b, tot[1] + v, tot[2] + f]
                checks += c
            r = dict(section="bits", recipe=recipe, mode="fp8" if fp8 else "bf16", bits_per_value=tot[0] / max(tot[1], 1),
                     values=tot[1], failed_chunks=tot[2], seconds=time.time() - t0, cross_checks=checks,
                     fingerprint=spec.fingerprint)
            emit(r)
            out.append(r)
            del spec
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--section", choices=["cost", "bits"], required=True)
    ap.add_argument("--recipes", nargs="+", default=RECIPES)
    ap.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--models", nargs="+", default=["llama3-8b", "smollm2-135m"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--transcripts", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    dev = torch.device("cuda")
    os.makedirs(a.out, exist_ok=True)
    meta = dict(date=time.strftime("%Y-%m-%dT%H:%M:%S"), host=platform.node(), device=torch.cuda.get_device_name(),
                torch=torch.__version__)
    f = open(os.path.join(a.out, "predictors.jsonl"), "a")

    def emit(r):
        r = {**r, "meta": meta}
        f.write(json.dumps(r) + "\n")
        f.flush()
        print(json.dumps({k: v for k, v in r.items() if k != "meta"}), flush=True)

    if a.section == "cost":
        for name in a.models:
            for T in a.tokens:
                args = get_model_args(name, max_seq_len=T + 16)
                sd = random_state_dict(args, seed=0, device=dev)
                for r in time_prefill(name, sd, args, T, dev, a.recipes, a.reps):
                    emit(r)
                del sd
                torch.cuda.empty_cache()
    else:
        rows = run_bits(a, dev, emit)
        print("\nrecipe              mode  bits/value  failed")
        for r in rows:
            print(f"{r['recipe']:<19} {r['mode']:<5} {r['bits_per_value']:9.3f}  {r['failed_chunks']}")


if __name__ == "__main__":
    main()
