"""The edge model's files: one ONNX graph + external-data weights per session, and a manifest.

Layout under <out>/edge/ (R2: models/<same names>; the variants share the decoder files):
    smollm2-135m-instruct-<variant>.json   manifest: sessions in run order, every file's size and SHA-256
    smollm2-135m-instruct/head-q4.onnx(.data), head-q8.onnx(.data)   embedding + lm_head tables
    smollm2-135m-instruct/layers-AA-BB.onnx(.data)                   decoder layers [AA, BB)
The Worker loads one session at a time through one staging buffer of the largest .data file, so the
isolate never holds a second full copy of the weights (src/edge-model/onnx-session.ts).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx

from .weights import HEAD_DIM, HIDDEN, KV_HEADS, LAYERS, VOCAB

MODEL = "smollm2-135m-instruct"
ORT_WEB_TAG = "ort-web-1.30.0-wasm"  # second half of the producer fingerprint of edge KV chunks
VARIANTS = {  # name -> lm_head/embedding table; the decoder layers are the GGUF's Q4_1 in both
    "q41h": "q41",  # the table requantized to Q4_1 blocks: 14 MB less resident, not the exact GGUF head
    "q8h": "q8",  # the GGUF's Q8_0 table: exact, 14 MB more resident
}
FORMS = {  # how the graphs turn the stored blocks into float32 weights on each run (same bytes resident)
    "dequant": "plain ONNX ops (DequantizeLinear of uint4; Cast and Mul of the int8 head), then MatMul/Gemm: "
               "the fastest form in onnxruntime-web's wasm build (the edge's)",
    "nbits": "MatMulNBits: onnxruntime-node's fast kernel; ort-web's wasm fallback of it is 2-5x slower (the bench's peer)",
}
GROUP = 6  # layers per session: 5 decoder sessions of ~13 MB, below the head's .data (the staging size)


def stem(variant: str) -> str:
    return f"{MODEL}-{variant}"


def groups() -> list[tuple[int, int]]:
    return [(a, min(a + GROUP, LAYERS)) for a in range(0, LAYERS, GROUP)]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_graph(model, path: Path) -> None:
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    tmp = path.with_suffix(".tmp")
    onnx.save(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True, location=data.name, size_threshold=1024)
    tmp.rename(path)


def head_file(variant: str) -> str:
    return f"head-{VARIANTS[variant]}.onnx"


def layers_file(a: int, b: int) -> str:
    return f"layers-{a:02d}-{b:02d}.onnx"


def write_manifest(out: Path, variant: str, form: str = "dequant") -> Path:
    """Manifest of the files written under out/<MODEL>/ (sizes and SHA-256 read back from disk)."""
    d = out / MODEL
    sessions = [{"name": "head", "graph": head_file(variant)}] + [
        {"name": layers_file(a, b)[:-5], "graph": layers_file(a, b), "first": a, "last": b} for a, b in groups()]
    files = []
    for s in sessions:
        for name in (s["graph"], s["graph"] + ".data"):
            files.append({"name": name, "bytes": (d / name).stat().st_size, "sha256": sha256_file(d / name)})
    manifest = {
        "format": "reprise-edge-model", "version": 1, "model": MODEL, "variant": variant, "head": VARIANTS[variant],
        "linear": form, "kv": "bf16-in-f16", "layers": LAYERS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM, "hidden": HIDDEN, "vocab": VOCAB,
        "runtime": ORT_WEB_TAG, "dir": MODEL, "sessions": sessions, "files": files,
        "staging_bytes": max(f["bytes"] for f in files if f["name"].endswith(".data")),
    }
    path = out / f"{stem(variant)}.json"
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return path


def producer(manifest_path: Path) -> str:
    """sha256 of the manifest bytes (it names every file's SHA-256) + the runtime tag: what edge KV depends on."""
    return f"sha256:{hashlib.sha256(manifest_path.read_bytes()).hexdigest()}+{ORT_WEB_TAG}"
