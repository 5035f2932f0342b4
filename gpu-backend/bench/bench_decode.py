"""Decode and prefill through the engine vs HF transformers' generate, on one GPU.

    python bench/bench_decode.py results.jsonl                 # H200: smollm2-135m (GGUF) + llama3-8b (random)
    python bench/bench_decode.py /tmp/smoke.jsonl --smoke      # tiny preset on the CPU, seconds
    python bench/bench_decode.py r.jsonl --variants fused reference --no-hf   # fused kernels vs the unfused
                                                                # PyTorch ops they replaced, same run

Per model, both implementations share the same BF16 weight tensors:
  decode   batch B in {1, 16, 64, 256}, every sequence `--context` tokens in: ours times `engine.step()`
           (schedule + inputs + CUDA-graph replay + sampling + bookkeeping, i.e. one token per sequence);
           HF times generate() for 1 and 1+N new tokens and takes the difference / N.
  prefill  one prompt of {512, 4096, 16384} tokens to its first token: ours through the engine in one
           chunk, HF through generate(max_new_tokens=1).
Decode bandwidth: bytes read per step / step time, where
    bytes = every weight once (lm_head included, the embedding table only B rows)  # read W
          + sum_b ctx_b * layers * 2 (K, V) * kv_heads * head_dim * 2 bytes          # read the KV cache
against a device-to-device copy measured in the same run (read + write of 1 GiB, bytes * 2 / time).
--variants: "fused" runs the Triton kernels (RMSNorm + residual, RoPE + K/V store, SiLU * up; the
default), "reference" their PyTorch references (layers/ops.py mode "reference", the pre-fusion path);
each gets its own engine and CUDA graphs, and its rows carry "variant".
One JSON line per measurement goes to the output path; a short table is printed last.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from reprise_gpu.config import Config, get_model_args  # noqa: E402
from reprise_gpu.engine.detokenizer import ByteTokenizer  # noqa: E402
from reprise_gpu.engine.llm_engine import LLMEngine  # noqa: E402
from reprise_gpu.engine.sampling import SamplingParams  # noqa: E402
from reprise_gpu.gguf_loader import load_gguf, random_state_dict, to_hf_state_dict  # noqa: E402
from reprise_gpu.layers import ops  # noqa: E402
from reprise_gpu.models.llama import build_model  # noqa: E402

BLOCK = 16
VARIANTS = {"fused": "auto", "reference": "reference"}  # -> layers/ops.py kernel mode


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def copy_bandwidth(dev: torch.device, nbytes: int, iters: int = 20) -> float:
    """Device-to-device copy, GB/s counting read + write."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    sync(dev)
    t = time.perf_counter()
    for _ in range(iters):
        dst.copy_(src)
    sync(dev)
    return 2 * nbytes * iters / (time.perf_counter() - t) / 1e9


def weight_bytes_per_step(sd: dict[str, torch.Tensor], args, batch: int) -> int:
    """Every tensor read once per step, except the input embedding (B rows) when it is not the lm_head."""
    total = sum(t.numel() * t.element_size() for n, t in sd.items() if n != "embed_tokens.weight")
    emb = sd["embed_tokens.weight"]
    if args.tie_embeddings and "lm_head.weight" not in sd:
        total += emb.numel() * emb.element_size()
    return total + batch * args.dim * emb.element_size()


def kv_bytes_per_step(args, ctxs: list[int]) -> int:
    return sum(ctxs) * args.n_layers * 2 * args.n_kv_heads * args.head_dim * 2


def prompt_ids(n: int, vocab: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n,), generator=g).tolist()


# ---- ours ---------------------------------------------------------------------------------------
def ours_decode(eng: LLMEngine, batch: int, context: int, warmup: int, steps: int) -> dict:
    params = SamplingParams(max_tokens=warmup + steps + 4, temperature=0, ignore_eos=True)
    seqs = [eng.add_request(prompt_ids(context, eng.config.model_args.vocab_size, i), params) for i in range(batch)]
    while any(s.num_cached < s.num_prompt_tokens for s in seqs):
        eng.step()
    for _ in range(warmup):
        eng.step()
    assert eng.scheduler.num_running == batch and all(not s.is_prefill for s in seqs)
    ctx0 = sum(len(s) for s in seqs)
    sync(eng.runner.device)
    t = time.perf_counter()
    for _ in range(steps):
        eng.step()
    sync(eng.runner.device)
    dt = (time.perf_counter() - t) / steps
    for s in seqs:
        eng.abort(s.seq_id)
    return {"step_ms": dt * 1e3, "ctx_tokens_mean": ctx0 / batch + steps / 2,
            "graph": batch <= max(eng.runner.graphs, default=0)}


def ours_prefill(eng: LLMEngine, n: int, reps: int) -> float:
    params = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    best = float("inf")
    for r in range(reps):
        seq = eng.add_request(prompt_ids(n, eng.config.model_args.vocab_size, 1000 + r), params)
        sync(eng.runner.device)
        t = time.perf_counter()
        while not seq.is_finished:
            eng.step()
        sync(eng.runner.device)
        best = min(best, time.perf_counter() - t)
    return best


# ---- HF -----------------------------------------------------------------------------------------
def hf_model(args, sd: dict[str, torch.Tensor], dev: torch.device):
    """LlamaForCausalLM (eager attention) holding the very same tensors as ours (no copy)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=args.vocab_size, hidden_size=args.dim, intermediate_size=args.ffn_dim,
                      num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads,
                      num_key_value_heads=args.n_kv_heads, head_dim=args.head_dim, rope_theta=args.rope_theta,
                      rms_norm_eps=args.norm_eps, tie_word_embeddings=args.tie_embeddings,
                      max_position_embeddings=args.max_seq_len, bos_token_id=None, eos_token_id=None,
                      pad_token_id=0, attn_implementation="eager", dtype=torch.bfloat16)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model.load_state_dict(to_hf_state_dict(sd, args), assign=True, strict=True)
    with torch.device(dev):                                       # the inv_freq buffer was built on meta
        model.model.rotary_emb = type(model.model.rotary_emb)(config=cfg)
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    return model.eval()


def hf_generate(model, ids: torch.Tensor, new: int) -> float:
    dev = ids.device
    sync(dev)
    t = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, pad_token_id=0, eos_token_id=None)
    sync(dev)
    assert out.shape[1] == ids.shape[1] + new
    return time.perf_counter() - t


def hf_decode(model, args, batch: int, context: int, steps: int, dev: torch.device) -> dict:
    ids = torch.tensor([prompt_ids(context, args.vocab_size, i) for i in range(batch)], device=dev)
    hf_generate(model, ids, 2)                                    # warm-up
    t1 = min(hf_generate(model, ids, 1) for _ in range(2))
    tn = hf_generate(model, ids, 1 + steps)
    return {"step_ms": (tn - t1) / steps * 1e3, "ctx_tokens_mean": context + steps / 2}


def hf_prefill(model, args, n: int, reps: int, dev: torch.device) -> float:
    ids = torch.tensor([prompt_ids(n, args.vocab_size, 1000)], device=dev)
    return min(hf_generate(model, ids, 1) for _ in range(reps))


# ---- driver -------------------------------------------------------------------------------------
def load_weights(name: str, args, dev: torch.device) -> tuple[dict[str, torch.Tensor], str]:
    cfg = Config(model=name, device=str(dev))
    if cfg.gguf_path is not None:
        return load_gguf(cfg.gguf_path, dtype=torch.bfloat16, device=dev)[1], os.path.basename(cfg.gguf_path)
    return random_state_dict(args, seed=0, dtype=torch.bfloat16, device=dev), "random(seed=0)"


def run_model(name: str, a, dev: torch.device, copy_gbps: float, emit) -> None:
    max_len = max(max(a.prefill), a.context + a.warmup + a.steps + 8) + BLOCK
    args = get_model_args(name, max_seq_len=max_len)
    sd, weights = load_weights(name, args, dev)
    max_batch = max(a.batches)
    blocks = max(max_batch * -(-(a.context + a.warmup + a.steps + 8) // BLOCK), -(-max_len // BLOCK)) + 8
    budget = max(max(a.prefill), max_batch)
    cfg = Config(model=name, device=str(dev), dtype="bfloat16", block_size=BLOCK, num_kv_blocks=blocks,
                 max_num_seqs=max_batch, max_num_batched_tokens=budget, prefill_chunk_size=max(a.prefill),
                 max_queue=max_batch + 8)
    cfg.model_args = args
    base = {"model": name, "weights": weights, "dtype": "bfloat16"}
    probe = prompt_ids(32, args.vocab_size, 7)
    ours = {}
    for variant in a.variants:
        with ops.kernel_mode(VARIANTS[variant]):
            ours[variant] = run_ours(a, cfg, args, sd, {**base, "variant": variant}, probe, copy_gbps, emit)
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if len(ours) > 1:
        same = next((i for i, toks in enumerate(zip(*ours.values())) if len(set(toks)) > 1), 8)
        emit({**base, "bench": "agreement", "between": list(ours), "greedy_tokens_equal_prefix": same, "of": 8})
    ours = next(iter(ours.values()))

    if not a.no_hf:
        model = hf_model(args, sd, dev)
        # sanity: both implementations continue one prompt greedily (bf16 kernels differ, so near-ties may flip)
        with torch.inference_mode():
            theirs = model.generate(torch.tensor([probe], device=dev), max_new_tokens=8, min_new_tokens=8,
                                    do_sample=False, pad_token_id=0, eos_token_id=None)[0, 32:].tolist()
        agree = next((i for i, (x, y) in enumerate(zip(ours, theirs)) if x != y), len(ours))
        emit({**base, "bench": "agreement", "greedy_tokens_equal_prefix": agree, "of": len(ours)})
        for b in a.batches:
            r = hf_decode(model, args, b, a.context, a.hf_steps, dev)
            decode_record(base, "hf-eager", b, r, args, sd, copy_gbps, emit)
        for n in a.prefill:
            try:
                s = hf_prefill(model, args, n, a.reps, dev)
                emit({**base, "bench": "prefill", "impl": "hf-eager", "tokens": n, "ms": s * 1e3,
                      "tokens_per_s": n / s})
            except torch.OutOfMemoryError as e:
                emit({**base, "bench": "prefill", "impl": "hf-eager", "tokens": n, "error": f"OOM: {e}"[:200]})
                torch.cuda.empty_cache()
        del model
    del sd
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def run_ours(a, cfg, args, sd, base, probe, copy_gbps, emit) -> list[int]:
    """Prefill and decode benches through one engine; returns its 8 greedy tokens after `probe`."""
    t = time.perf_counter()
    eng = LLMEngine(cfg, model=build_model(args, sd), tokenizer=ByteTokenizer(), cuda_graphs=not a.no_graphs,
                    compile_decode=a.compile)
    ours_base = {**base, "cuda_graphs": bool(eng.runner.graphs), "compiled": eng.runner.compiled}
    emit({**ours_base, "bench": "setup", "impl": "reprise", "seconds": time.perf_counter() - t,
          "graph_sizes": sorted(eng.runner.graphs)})
    for n in a.prefill:                                               # first: also JIT-compiles prefill shapes
        s = ours_prefill(eng, n, a.reps)
        emit({**ours_base, "bench": "prefill", "impl": "reprise", "tokens": n, "ms": s * 1e3, "tokens_per_s": n / s})
    for b in a.batches:
        r = ours_decode(eng, b, a.context, a.warmup, a.steps)
        decode_record(ours_base, "reprise", b, r, args, sd, copy_gbps, emit)
    assert eng.block_manager.num_used == 0
    tokens = eng.generate([probe], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))[0]["token_ids"]
    del eng
    return tokens


def decode_record(base, impl, batch, r, args, sd, copy_gbps, emit):
    step_s = r["step_ms"] / 1e3
    nbytes = weight_bytes_per_step(sd, args, batch) + kv_bytes_per_step(args, [int(r["ctx_tokens_mean"])] * batch)
    gbps = nbytes / step_s / 1e9
    emit({**base, "bench": "decode", "impl": impl, "batch": batch, **r, "tpot_ms": r["step_ms"],
          "tokens_per_s": batch / step_s, "bytes_per_step": nbytes, "achieved_GBps": gbps,
          "copy_GBps": copy_gbps, "frac_of_copy": gbps / copy_gbps})


def table(rows: list[dict]) -> str:
    lines = [f"{'model':<14}{'impl':<14}{'workload':<16}{'ms':>10}{'tok/s':>12}{'BW/copy':>9}"]
    for r in rows:
        if r["bench"] == "decode":
            w, ms, bw = f"decode b={r['batch']}", r["step_ms"], f"{r['frac_of_copy']:.0%}"
        elif r["bench"] == "prefill":
            w, ms, bw = f"prefill {r['tokens']}", r.get("ms", float("nan")), ""
        else:
            continue
        impl = r["impl"] + ("+c" if r.get("compiled") else "") + ("/ref" if r.get("variant") == "reference" else "")
        lines.append(f"{r['model']:<14}{impl:<14}{w:<16}{ms:>10.3f}{r.get('tokens_per_s', float('nan')):>12.1f}"
                     f"{bw:>9}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="JSONL output path (appended to)")
    p.add_argument("--smoke", action="store_true", help="tiny preset on the CPU with tiny sizes")
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--batches", nargs="+", type=int, default=None)
    p.add_argument("--prefill", nargs="+", type=int, default=None)
    p.add_argument("--context", type=int, default=None, help="prompt tokens per decoding sequence")
    p.add_argument("--steps", type=int, default=None, help="timed decode steps (ours)")
    p.add_argument("--hf-steps", type=int, default=None, help="timed decode steps (HF)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--no-hf", action="store_true")
    p.add_argument("--no-graphs", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step before graph capture")
    p.add_argument("--variants", nargs="+", default=["fused"], choices=list(VARIANTS),
                   help="kernel paths to time, each with its own engine (default: fused)")
    p.add_argument("--device", default=None)
    a = p.parse_args()
    smoke = dict(models=["tiny"], batches=[1, 4], prefill=[16, 64], context=16, steps=4, hf_steps=2, reps=1,
                 device="cpu")
    full = dict(models=["smollm2-135m", "llama3-8b"], batches=[1, 16, 64, 256], prefill=[512, 4096, 16384],
                context=512, steps=50, hf_steps=16, reps=3, device="cuda")
    for k, v in (smoke if a.smoke else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.smoke:
        a.warmup = min(a.warmup, 2)
    dev = torch.device(a.device)
    torch.manual_seed(0)

    rows: list[dict] = []
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cmd": " ".join(sys.argv), "torch": torch.__version__, "host": platform.node(),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
            "context": a.context}

    def emit(rec: dict) -> None:
        rec = {**rec, **meta}
        rows.append(rec)
        with open(a.out, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)

    copy_gbps = copy_bandwidth(dev, (1 << 30) if dev.type == "cuda" else (64 << 20))
    emit({"bench": "copy", "copy_GBps": copy_gbps})
    for name in a.models:
        run_model(name, a, dev, copy_gbps, emit)
    print(f"\nD2D copy: {copy_gbps:.0f} GB/s (read + write)   device: {meta['device_name']}")
    print(table(rows))
    for r in rows:
        if r["bench"] == "decode" and r["impl"] == "reprise" and r["model"] == "smollm2-135m" and r["batch"] == 1:
            print(f"SmolLM2 decode at batch 1 ({r['variant']}): {r['tpot_ms']:.3f} ms/token (target < 2 ms)")


if __name__ == "__main__":
    main()
