"""Chunk objects for a synthetic long session (bench/worker_heap_bench.mjs): raw-bf16 containers of the
token ranges asked for, with the producer fingerprint of the backend that will read them and a chunk MAC
for their object keys (docs/storage-grants.md), so the backend accepts them exactly as chunks it wrote.

The K/V values are random (normal, BF16): the bench measures where bytes go, not what they say.

    python bench/make_heap_session.py --producer P --secret-file S --session sess_x --ranges 0:1000,1000:2000 \\
        --model llama3-8b-kv --out DIR     # writes DIR/<n>.kv and DIR/manifest.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch

from reprise_gpu.config import get_model_args
from reprise_gpu.engine import kv_io
from reprise_gpu.server.storage_io import with_mac
from reprise_gpu.storage.chunk_mac import mac_key


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--producer", required=True)
    p.add_argument("--secret-file", required=True)
    p.add_argument("--session", required=True)
    p.add_argument("--ranges", required=True, help="start:end,start:end,… contiguous from 0")
    p.add_argument("--model", default="llama3-8b-kv")
    p.add_argument("--out", required=True)
    p.add_argument("--no-mac", action="store_true", help="chunks as the edge writes them (inline path)")
    a = p.parse_args()
    args = get_model_args(a.model)
    k_mac = mac_key(Path(a.secret_file).read_text())
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    manifest = []
    for n, r in enumerate(a.ranges.split(",")):
        start, end = map(int, r.split(":"))
        kv = torch.randn((args.n_layers, 2, args.n_kv_heads, end - start, args.head_dim), generator=gen).to(torch.bfloat16)
        key = f"sessions/{a.session}/{n}.kv"
        data = kv_io.encode_chunk(kv, start, a.producer)
        if not a.no_mac:
            data = bytes(with_mac(data, key, k_mac))
        (out / f"{n}.kv").write_bytes(data)
        _, _, hlen = kv_io.PREFIX.unpack_from(data)
        header = json.loads(data[kv_io.PREFIX.size:kv_io.PREFIX.size + hlen])
        manifest.append({"r2Key": key, "file": str(out / f"{n}.kv"), "tokenStart": start, "tokenEnd": end,
                         "producer": a.producer, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                         "codec": "raw-bf16", **({"mac": header["mac"]} if "mac" in header else {})})
    (out / "manifest.json").write_text(json.dumps(manifest))


if __name__ == "__main__":
    main()
