"""Write the spec-v1 test vectors (from the repository root: gpu-backend/.venv/bin/python vectors/kv-codec/make_vectors.py).

Every file is little-endian raw data described by manifest.json, so a wasm or GPU port can read them
without NumPy. Cases:
    rans-*      one static table, symbols, lanes -> the coder's final states (u32) and words (u16)
    bf16-*      target BF16 bits (u16) [L, 2, KH, T, D] + float32 predictions -> spec-v1 chunk bytes
    fp8-*       target e4m3 codes (u8) + row exponents (i8) [L, 2, KH, T] + predictions -> chunk bytes
    v2-*        the same inputs -> spec-v2 chunk bytes ("format": "spec-v2", "block_steps")
    phi-table   the Q30 Gaussian CDF table the frequency tables are built from (i64)
gpu-backend/tests/test_codec_vectors.py checks that the Python coder still produces exactly these bytes;
wasm/tests/ decode them with the wasm decoder inside workerd.
Regenerate only with a new SPEC_VERSION.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from reprise_gpu.codec.fp8cache import quantize_fp8
from reprise_gpu.codec.rans import rans_encode
from reprise_gpu.codec.spec import encode_chunk
from reprise_gpu.codec.spec2 import encode_chunk_v2
from reprise_gpu.codec.tables import phi_table

HERE = os.path.dirname(os.path.abspath(__file__))
FINGERPRINT = "spec-v1 test vectors"


def bf16_bits(x: np.ndarray) -> np.ndarray:
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), ((u >> 16) | 0x40).astype(np.uint16), r)


def inputs(L, KH, T, D, seed, adversarial):
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.normal(0, 1.5, (L, 2, KH, 1, D)))
    x = (rng.standard_normal((L, 2, KH, T, D)) * scale).astype(np.float32)
    pred = (x + 0.03 * scale * rng.standard_normal(x.shape)).astype(np.float32)
    if adversarial:
        flat, pf = x.reshape(-1), pred.reshape(-1)
        special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, 3.3e38, -1e-30, 7.0], np.float32)
        flat[: special.size] = special
        pf[special.size: 2 * special.size] = special
        flat[100:110] *= 1e4
    return bf16_bits(x), pred


def main():
    files, cases = {}, []

    def put(name: str, arr: np.ndarray, dtype: str) -> str:
        fn = f"{name}.{dtype}.bin"
        data = np.ascontiguousarray(arr).astype("<" + dtype if dtype not in ("u1", "i1") else dtype).tobytes()
        with open(os.path.join(HERE, fn), "wb") as f:
            f.write(data)
        files[fn] = hashlib.sha256(data).hexdigest()
        return fn

    freqs = np.array([20000, 9000, 3000, 767, 1], np.int64)
    cum = np.concatenate([[0], np.cumsum(freqs)])
    syms = np.random.default_rng(7).choice(5, 200, p=freqs / freqs.sum())
    syms[:3] = 4
    states, words = rans_encode(cum[syms], freqs[syms], 3, 15)
    cases.append({"name": "rans-5sym", "kind": "rans", "prob_bits": 15, "lanes": 3, "freqs": freqs.tolist(),
                  "symbols": put("rans-5sym.symbols", syms, "u1"), "states": put("rans-5sym.states", states, "u4"),
                  "words": put("rans-5sym.words", words, "u2")})
    specs = [("bf16-improved", "improved", False, (2, 2, 6, 8), 1, 5),
             ("bf16-baseline", "baseline", False, (2, 2, 6, 8), 1, 5),
             ("bf16-adversarial", "improved", False, (1, 3, 7, 16), 2, None),
             ("fp8-improved", "improved", True, (2, 2, 6, 8), 3, 4),
             ("bf16-empty", "improved", False, (2, 1, 0, 4), 4, None),
             # spec-v2: "lanes" is block_steps (steps of 32 lanes per block)
             ("v2-bf16-improved", "improved", False, (2, 2, 6, 8), 1, 2),
             ("v2-bf16-baseline", "baseline", False, (2, 2, 6, 8), 1, 1),
             ("v2-bf16-adversarial", "improved", False, (1, 3, 7, 16), 2, None),
             ("v2-fp8-improved", "improved", True, (2, 2, 6, 8), 3, 2),
             ("v2-bf16-empty", "improved", False, (2, 1, 0, 4), 4, None)]
    for name, model, fp8, (L, KH, T, D), seed, lanes in specs:
        v2 = name.startswith("v2-")
        target, pred = inputs(L, KH, T, D, seed, adversarial=name.endswith("adversarial"))
        case = {"name": name, "kind": "chunk", "mode": "fp8" if fp8 else "bf16", "model": model,
                "shape": [L, 2, KH, T, D], "token_start": 3, "fingerprint": FINGERPRINT,
                **({"format": "spec-v2", "block_steps": lanes} if v2 else {"lanes": lanes}),
                "pred": put(f"{name}.pred", pred, "f4")}
        if fp8:
            q = quantize_fp8((target.astype(np.uint32) << 16).view(np.float32))
            case["codes"], case["exps"] = put(f"{name}.codes", q.codes, "u1"), put(f"{name}.exps", q.exps, "i1")
            target = q
        else:
            case["target"] = put(f"{name}.target", target, "u2")
        if v2:
            chunk = encode_chunk_v2(target, pred, fingerprint=FINGERPRINT, token_start=3, model=model, block_steps=lanes)
        else:
            chunk = encode_chunk(target, pred, fingerprint=FINGERPRINT, token_start=3, model=model, lanes=lanes)
        case["chunk"] = put(f"{name}.chunk", np.frombuffer(chunk, np.uint8), "u1")
        cases.append(case)
    cases.append({"name": "phi-table", "kind": "table", "data": put("phi-table", phi_table(), "i8")})
    # spec-v2 cases in their own manifest, so a spec-v1-only decoder (the wasm one) reads only its own
    for fmt, fn in (("spec-v1", "manifest.json"), ("spec-v2", "manifest-v2.json")):
        mine = [c for c in cases if c.get("format", "spec-v1") == fmt]
        used = {v for c in mine for v in c.values() if isinstance(v, str) and v in files}
        with open(os.path.join(HERE, fn), "w") as f:
            json.dump({"format": fmt, "cases": mine, "sha256": {k: files[k] for k in files if k in used}}, f, indent=1)
            f.write("\n")
    print(f"wrote {len(files)} files, {sum(os.path.getsize(os.path.join(HERE, n)) for n in files)} bytes")


if __name__ == "__main__":
    main()
