"""The committed spec-v1 test vectors (vectors/kv-codec/ at the repository root, see make_vectors.py there): the coder must still
produce exactly these bytes, and decode them back — the contract a wasm or GPU port tests against."""

import hashlib
import json
import os

import numpy as np
import pytest

from reprise_gpu.codec.fp8cache import Fp8Kv
from reprise_gpu.codec.rans import rans_encode
from reprise_gpu.codec.spec import FixedPredictions, decode_chunk, encode_chunk
from reprise_gpu.codec.spec2 import decode_chunk_v2, encode_chunk_v2
from reprise_gpu.codec.tables import phi_table

# Neutral folder read by these tests and by the wasm decoder's tests (wasm/tests/).
DIR = os.path.join(os.path.dirname(__file__), "..", "..", "vectors", "kv-codec")
MANIFEST = json.load(open(os.path.join(DIR, "manifest.json")))
MANIFEST_V2 = json.load(open(os.path.join(DIR, "manifest-v2.json")))
SHA256 = {**MANIFEST["sha256"], **MANIFEST_V2["sha256"]}


def load(fn, dtype, shape=None):
    data = open(os.path.join(DIR, fn), "rb").read()
    assert hashlib.sha256(data).hexdigest() == SHA256[fn], fn
    a = np.frombuffer(data, np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).itemsize > 1 else dtype)
    return a.reshape(shape) if shape is not None else a


@pytest.mark.parametrize("case", MANIFEST["cases"] + MANIFEST_V2["cases"], ids=lambda c: c["name"])
def test_vector(case):
    if case["kind"] == "rans":
        freqs = np.array(case["freqs"])
        cum = np.concatenate([[0], np.cumsum(freqs)])
        syms = load(case["symbols"], "u1").astype(np.int64)
        states, words = rans_encode(cum[syms], freqs[syms], case["lanes"], case["prob_bits"])
        assert np.array_equal(states, load(case["states"], "u4")) and np.array_equal(words, load(case["words"], "u2"))
        return
    if case["kind"] == "table":
        assert np.array_equal(phi_table(), load(case["data"], "i8"))
        return
    shape = tuple(case["shape"])
    pred = load(case["pred"], "f4", shape)
    if case["mode"] == "fp8":
        target = Fp8Kv(load(case["codes"], "u1", shape).copy(), load(case["exps"], "i1", shape[:-1]).copy())
    else:
        target = load(case["target"], "u2", shape)
    expected = load(case["chunk"], "u1").tobytes()
    v2 = case.get("format") == "spec-v2"
    if v2:
        got = encode_chunk_v2(target, pred, fingerprint=case["fingerprint"], token_start=case["token_start"],
                              model=case["model"], block_steps=case["block_steps"])
    else:
        got = encode_chunk(target, pred, fingerprint=case["fingerprint"], token_start=case["token_start"],
                           model=case["model"], lanes=case["lanes"])
    assert got == expected
    L, _, KH, T, D = shape
    res = (decode_chunk_v2 if v2 else decode_chunk)(expected, FixedPredictions(pred), fingerprint=case["fingerprint"], layers=L, kv_heads=KH,
                       head_dim=D, token_start=case["token_start"], token_end=case["token_start"] + T)
    assert res.ok, res.message
    if case["mode"] == "fp8":
        assert np.array_equal(res.values.codes, target.codes) and np.array_equal(res.values.exps, target.exps)
    else:
        assert np.array_equal(res.values, target)
