"""Write the hostile-bytes corpus for spec-v1 decoders (hostile.json), with the Python reference's
status for each entry (from the repository root: gpu-backend/.venv/bin/python vectors/kv-codec/make_hostile.py).

Each entry is a recipe applied to one committed chunk vector, so the corpus stays small and every
decoder can rebuild the same bytes:
    truncate  keep the first `len` bytes
    append    add `hex` at the end
    set       set byte `pos` to `value`
    xor       XOR byte `pos` with `flip`
    splice    replace bytes [pos, pos + len(hex)) with `hex`
with `resign: true` the SHA-256 trailer is recomputed after the edit (an attacker's edit that passes
the payload checksum and reaches the stream decoders). A decoder must return exactly `status` for
each entry, and OK only with the target's exact values.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from reprise_gpu.codec.fp8cache import Fp8Kv
from reprise_gpu.codec.spec import FixedPredictions, decode_chunk

HERE = os.path.dirname(os.path.abspath(__file__))
BASES = ["bf16-improved", "bf16-baseline", "fp8-improved", "bf16-adversarial"]
HEAD = 94


def apply(data: bytes, r: dict) -> bytes:
    b = bytearray(data)
    op = r["op"]
    if op == "truncate":
        b = b[: r["len"]]
    elif op == "append":
        b += bytes.fromhex(r["hex"])
    elif op == "set":
        b[r["pos"]] = r["value"]
    elif op == "xor":
        b[r["pos"]] ^= r["flip"]
    elif op == "splice":
        h = bytes.fromhex(r["hex"])
        b[r["pos"]: r["pos"] + len(h)] = h
    if r.get("resign") and len(b) >= 32:
        b[-32:] = hashlib.sha256(bytes(b[:-32])).digest()
    return bytes(b)


def recipes(name: str, n: int, rng: np.random.Generator) -> list[dict]:
    out = [{"op": "truncate", "len": k} for k in (0, 3, 4, 5, 6, 60, HEAD, HEAD + 31, HEAD + 32, n // 2, n - 33, n - 1)]
    out += [{"op": "append", "hex": "00"}, {"op": "append", "hex": "00" * 40, "resign": True}]
    # every header byte, flipped, with and without a fresh trailer
    out += [{"op": "xor", "pos": p, "flip": int(rng.integers(1, 256)), "resign": bool(p % 2)} for p in range(HEAD)]
    # header fields set to extremes
    for pos, val in [(6, 2), (7, 2), (58, 16), (40, 0), (42, 0), (44, 0), (54, 0), (57, 0x40), (55, 0xFF)]:
        out.append({"op": "set", "pos": pos, "value": val, "resign": True})
    # stream and parameter bytes, re-signed so that the decoders see them
    for p in rng.integers(HEAD, n - 32, 40):
        out.append({"op": "xor", "pos": int(p), "flip": int(rng.integers(1, 256)), "resign": True})
    for p in rng.integers(HEAD, n - 40, 10):
        out.append({"op": "splice", "pos": int(p), "hex": rng.integers(0, 256, 8, dtype=np.uint8).tobytes().hex(), "resign": True})
    # stream sizes (n_words, n_raw, n_exp): the 12 bytes before the rANS states
    return out


def main():
    manifest = json.load(open(os.path.join(HERE, "manifest.json")))
    cases = {c["name"]: c for c in manifest["cases"]}
    read = lambda fn: open(os.path.join(HERE, fn), "rb").read()  # noqa: E731
    rng = np.random.default_rng(12)
    entries = []
    for name in BASES:
        c = cases[name]
        shape = tuple(c["shape"])
        L, _, KH, T, D = shape
        data = read(c["chunk"])
        pred = np.frombuffer(read(c["pred"]), "<f4").reshape(shape)
        if c["mode"] == "fp8":
            target = Fp8Kv(np.frombuffer(read(c["codes"]), np.uint8).reshape(shape), np.frombuffer(read(c["exps"]), np.int8).reshape(shape[:-1]))
        else:
            target = np.frombuffer(read(c["target"]), "<u2").reshape(shape)
        sizes_at = HEAD + 2 * L * (4 + KH * D)
        rs = recipes(name, len(data), rng)
        rs += [{"op": "xor", "pos": sizes_at + k, "flip": f, "resign": True} for k in range(12) for f in (1, 0x80)]
        for r in rs:
            res = decode_chunk(apply(data, r), FixedPredictions(pred), fingerprint=c["fingerprint"], layers=L, kv_heads=KH,
                               head_dim=D, token_start=c["token_start"], token_end=c["token_start"] + T)
            if res.ok:  # only an edit that changes nothing may decode
                same = (np.array_equal(res.values.codes, target.codes) and np.array_equal(res.values.exps, target.exps)
                        if c["mode"] == "fp8" else np.array_equal(res.values, target))
                assert same, (name, r)
            entries.append({"base": name, **r, "status": res.status.name})
    with open(os.path.join(HERE, "hostile.json"), "w") as f:
        json.dump({"format": "spec-v1", "generated_by": "vectors/kv-codec/make_hostile.py", "entries": entries}, f, indent=0)
        f.write("\n")
    counts = {}
    for e in entries:
        counts[e["status"]] = counts.get(e["status"], 0) + 1
    print(f"wrote {len(entries)} entries: {counts}")


if __name__ == "__main__":
    main()
