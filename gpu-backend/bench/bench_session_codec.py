"""Session chunks raw-bf16 vs spec-v1: bytes per token, export time, and time to first token on resume.

    python bench/bench_session_codec.py OUT.jsonl [--sessions 4] [--turns 3] [--reply-tokens 160]

SmolLM2 on CUDA if available (else the CPU), multi-turn chats from bench_kv_codec's prompts. Each turn
runs on an engine exporting spec-v1 chunks, resuming from the chunks of the turns before it, and the
same prompt runs on a raw-bf16 engine (same weights) resuming from raw chunks and with no chunks at
all (recompute). Per turn: chunk bytes of both codecs, spec-v1 export time (speculator + NumPy
encoder), spec-v1 decode time (speculator + decoder, inside the time to first token), and time to first
token for the three ways in. One session at a time (latency, not load).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench_kv_codec import FOLLOWUPS, PROMPTS, chatml  # noqa: E402
from reprise_gpu.config import Config  # noqa: E402
from reprise_gpu.engine.kv_io import PREFIX  # noqa: E402
from reprise_gpu.engine.llm_engine import LLMEngine  # noqa: E402
from reprise_gpu.engine.sampling import SamplingParams  # noqa: E402


def ttft(engine: LLMEngine, prompt: list[int], params: SamplingParams, chunks: list[bytes]):
    """(seconds to the first token incl. chunk decoding, the finished sequence)."""
    t0 = time.perf_counter()
    seq = engine.add_request(prompt, params, kv_chunks=chunks, export_kv=True)
    first = None
    while engine.has_work():
        engine.step()
        if first is None and seq.num_completion_tokens:
            if engine.config.device != "cpu":
                torch.cuda.synchronize()
            first = time.perf_counter() - t0
    return first, seq


def header_tokens(chunk: bytes) -> int:
    """Tokens a container chunk covers (token_end - token_start of its header)."""
    _, _, hlen = PREFIX.unpack_from(chunk)
    h = json.loads(chunk[PREFIX.size:PREFIX.size + hlen])
    return h["token_end"] - h["token_start"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--reply-tokens", type=int, default=160)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    common = dict(model="smollm2-135m", device=dev, num_kv_blocks=1024, max_num_seqs=4,
                  max_num_batched_tokens=4096, prefill_chunk_size=2048)
    raw = LLMEngine(Config(**common), cuda_graphs=dev == "cuda")
    spec = LLMEngine(Config(**common, kv_codec="spec-v1"), model=raw.model, tokenizer=raw.tokenizer,
                     cuda_graphs=dev == "cuda")
    export_s = []
    inner = spec.kv.export

    def timed_export(*args):
        """Predictions + coding, waited for here (in a server the coding overlaps the next steps)."""
        t = time.perf_counter()
        out = inner(*args)
        out.result()
        export_s.append(time.perf_counter() - t)
        return out
    spec.kv.export = timed_export
    decode_s = [0.0]
    coder = spec.kv.coder
    inner_decode = coder.decode

    def timed_decode(*args):
        t = time.perf_counter()
        try:
            return inner_decode(*args)
        finally:
            decode_s[0] += time.perf_counter() - t
    coder.decode = timed_decode

    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": platform.node(), "device":
            torch.cuda.get_device_name() if dev == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "argv": sys.argv[1:] if argv is None else argv}
    rows = []
    params = SamplingParams(max_tokens=a.reply_tokens, temperature=0)
    tok = raw.tokenizer
    for s in range(a.sessions):
        prompt = chatml(tok, [("user", PROMPTS[(7 * s) % len(PROMPTS)])], True)
        spec_chunks, raw_chunks = [], []
        for turn in range(a.turns):
            decode_s[0] = 0.0
            t_spec, sq = ttft(spec, prompt, params, spec_chunks)
            t_raw, rq = ttft(raw, prompt, params, raw_chunks)
            t_none, _ = ttft(raw, prompt, params, [])
            n = header_tokens(sq.kv_chunk)
            rows.append({"session": s, "turn": turn, "prompt_tokens": len(prompt), "restored": sq.num_restored,
                         "restored_raw": rq.num_restored,
                         # on CUDA a resumed prefill (other GEMM shapes) may round differently from a full
                         # one; spec-v1 and raw resumes restore the same bits, so these should agree
                         "same_tokens_as_raw_resume": sq.completion_token_ids == rq.completion_token_ids,
                         "chunk_tokens": n, "raw_bytes": len(rq.kv_chunk), "spec_bytes": len(sq.kv_chunk),
                         "spec_export_s": export_s[-1], "spec_decode_s": decode_s[0], "ttft_spec_s": t_spec,
                         "ttft_raw_s": t_raw,
                         "ttft_recompute_s": t_none, "meta": meta if not rows else None})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "meta"}), flush=True)
            spec_chunks.append(sq.kv_chunk)
            raw_chunks.append(rq.kv_chunk)
            # the next prompt extends this turn's tokens, as the edge's sessions do (chunks cover a prefix)
            user = FOLLOWUPS[(s + turn) % len(FOLLOWUPS)]
            prompt = sq.token_ids + tok.encode(f"<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
                                               "<|im_start|>assistant\n").ids
    with open(a.out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    n_tok = sum(r["chunk_tokens"] for r in rows)
    print(f"\n{meta['device']}: {len(rows)} turns, {n_tok} chunk tokens")
    print(f"bytes per token: raw-bf16 {sum(r['raw_bytes'] for r in rows) / n_tok:.0f}, "
          f"spec-v1 {sum(r['spec_bytes'] for r in rows) / n_tok:.0f} "
          f"({sum(r['spec_bytes'] for r in rows) / sum(r['raw_bytes'] for r in rows):.3f}x)")
    print(f"spec-v1 export: {sum(r['spec_export_s'] for r in rows) / n_tok * 1e3:.2f} ms per token")
    res = [r for r in rows if r["restored"]]
    if res:
        med = lambda k: float(np.median([r[k] for r in res]))  # noqa: E731
        print(f"resumed turns ({len(res)}), median TTFT: spec-v1 {med('ttft_spec_s'):.3f} s (of which decoding "
              f"{med('spec_decode_s'):.3f} s), raw-bf16 {med('ttft_raw_s'):.3f} s, recompute {med('ttft_recompute_s'):.3f} s")


if __name__ == "__main__":
    main()
