"""The GPU coder on real SmolLM2 KV, on a machine without CUDA (Triton interpreter): a short chat's K/V
(the BF16 model from the GGUF), chunked as a session exports it, coded by the GPU coder with predictions
of the CPU speculator, decoded by a fresh speculator run inside the GPU decoder, and cross-checked with the
NumPy reference both ways (same bytes; NumPy decodes the GPU's bytes). Both modes.

    python bench/check_real_kv.py OUT.json [--tokens 24] [--chunk 12]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_predictors import code_transcript, speculator  # noqa: E402
from reprise_gpu.config import get_model_args, smollm2_gguf_path  # noqa: E402
from reprise_gpu.engine.detokenizer import tokenizer_from_gguf  # noqa: E402
from reprise_gpu.gguf_loader import load_gguf  # noqa: E402
from reprise_gpu.models.llama import build_model  # noqa: E402
from reprise_gpu.speculator.target import target_kv  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--chunk", type=int, default=12)
    a = ap.parse_args(argv)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    path = smollm2_gguf_path()
    args = get_model_args("smollm2-135m")
    _, sd = load_gguf(path, dtype=torch.bfloat16, device=dev)
    model = build_model(args, sd)
    tok = tokenizer_from_gguf(path)
    text = "<|im_start|>user\nWhy is the sky blue? Answer in two sentences.<|im_end|>\n<|im_start|>assistant\n"
    ids = torch.tensor((tok.encode(text).ids * 8)[:a.tokens], device=dev)
    kv = target_kv(model, ids)
    spans = [(s, min(a.tokens, s + a.chunk)) for s in range(0, a.tokens, a.chunk)]
    out = dict(tokens=a.tokens, spans=spans, device=str(dev), date=time.strftime("%Y-%m-%dT%H:%M:%S"), modes={})
    for fp8 in (False, True):
        t0 = time.time()
        spec = speculator(sd, args, "w8a8-kvx", fp8, dev)
        bits, values, fails, checks = code_transcript(spec, ids, kv, fp8, spans, cross=len(spans))
        out["modes"]["fp8" if fp8 else "bf16"] = dict(bits_per_value=bits / max(values, 1), values=values,
                                                      failed_chunks=fails, cross_checks=checks,
                                                      seconds=round(time.time() - t0, 1))
        print(json.dumps(out["modes"]["fp8" if fp8 else "bf16"]), flush=True)
    json.dump(out, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
