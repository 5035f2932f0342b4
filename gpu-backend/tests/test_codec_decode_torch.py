"""The PyTorch/Triton spec-v1 decoder against the NumPy reference: same values, same statuses.

On a CPU-only machine the Triton rANS kernel runs in the interpreter (rans="kernel") on small chunks;
on CUDA the same tests run on the GPU.
"""

import json
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_codec_spec import FP, corrupt_and_resign, sample
from test_codec_vectors import DIR as VECTORS

from reprise_gpu.codec.decode_torch import decode_chunk_torch
from reprise_gpu.codec.format import Status
from reprise_gpu.codec.rans_kernel import decode_segment, decode_segment_ref, slot_lut
from reprise_gpu.codec.spec import FixedPredictions, decode_chunk, encode_chunk
from reprise_gpu.codec.tables import build_tables, cumulative

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Tensors:
    """FixedPredictions as tensors on DEV; records what the decoder observed."""

    def __init__(self, pred: np.ndarray):
        self.pred = torch.from_numpy(pred).to(DEV)
        self.seen = []

    def predict(self, layer):
        return self.pred[layer]

    def observe(self, layer, values):
        self.seen.append(values.cpu())


def both(data, pred, rans, **kw):
    L, _, KH, T, D = pred.shape
    args = dict(fingerprint=FP, layers=L, kv_heads=KH, head_dim=D, token_start=5, token_end=5 + T)
    args.update(kw)
    ref = decode_chunk(data, FixedPredictions(pred), **args)
    got = decode_chunk_torch(data, Tensors(pred), device=DEV, rans=rans, **args)
    return ref, got


@pytest.mark.parametrize("rans", ["reference", "kernel"])
@pytest.mark.parametrize("model,lanes,T", [("improved", None, 9), ("baseline", 3, 17), ("improved", 64, 40)])
def test_same_values_as_numpy(rans, model, lanes, T):
    target, pred = sample(T=T, seed=T)
    data = encode_chunk(target, pred, fingerprint=FP, token_start=5, model=model, lanes=lanes)
    ref, got = both(data, pred, rans)
    assert ref.ok and got.ok, got.message
    assert got.values.dtype == np.uint16 and np.array_equal(got.values, target)


def test_committed_bf16_vectors():
    manifest = json.load(open(os.path.join(VECTORS, "manifest.json")))
    cases = [c for c in manifest["cases"] if c.get("kind") == "chunk" and c["mode"] == "bf16"]
    assert cases
    for case in cases:
        shape = tuple(case["shape"])
        read = lambda fn: open(os.path.join(VECTORS, fn), "rb").read()   # noqa: E731
        pred = np.frombuffer(read(case["pred"]), "<f4").reshape(shape).copy()
        target = np.frombuffer(read(case["target"]), "<u2").reshape(shape)
        L, _, KH, T, D = shape
        res = decode_chunk_torch(read(case["chunk"]), Tensors(pred), fingerprint=case["fingerprint"], layers=L,
                                 kv_heads=KH, head_dim=D, token_start=case["token_start"],
                                 token_end=case["token_start"] + T, device=DEV, rans="kernel")
        assert res.ok, (case["name"], res.message)
        assert np.array_equal(res.values, target), case["name"]


def test_observes_each_layer_before_predicting_the_next():
    target, pred = sample(L=3, T=7)
    data = encode_chunk(target, pred, fingerprint=FP, token_start=5)
    p = Tensors(pred)
    res = decode_chunk_torch(data, p, fingerprint=FP, layers=3, kv_heads=2, head_dim=8, token_start=5,
                             token_end=12, device=DEV)
    assert res.ok and len(p.seen) == 3
    for layer, v in enumerate(p.seen):                     # BF16 values as float32, bit for bit
        assert np.array_equal((v.numpy().view(np.uint32) >> 16).astype(np.uint16), target[layer])


def test_hostile_bytes_give_the_same_statuses():
    target, pred = sample(T=20)
    data = encode_chunk(target, pred, fingerprint=FP, token_start=5)
    cases = [data[:40], data[:-1], data + b"\0", b"RPKV" + data[4:], b"", data[:4] + b"\x02\x00" + data[6:]]
    for pos in (100, len(data) // 2, len(data) - 40):
        bad = bytearray(data)
        bad[pos] ^= 0x10
        cases.append(bytes(bad))
    for c in cases:
        ref, got = both(c, pred, "reference")
        assert got.status == ref.status != Status.OK
    assert both(data, pred, "reference", fingerprint="other")[1].status == Status.FINGERPRINT_MISMATCH
    assert both(data, pred * 1.01, "reference")[1].status in (Status.VALUE_CHECKSUM, Status.CORRUPT)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 255))
def test_resigned_corruption_matches_numpy(pos, flip):
    """Bytes changed and re-checksummed: both decoders give the same status (and never an exception)."""
    target, pred = sample(T=6, seed=3)
    data = encode_chunk(target, pred, fingerprint=FP, token_start=5)
    ref, got = both(corrupt_and_resign(data, pos, flip), pred, "reference")
    assert got.status == ref.status, (got.message, ref.message)
    if got.ok:
        assert np.array_equal(got.values, target)


def test_kernel_matches_its_reference_on_random_streams():
    """The Triton loop and the PyTorch loop on the same (valid or garbage) streams: same symbols, states, cursor."""
    rng = np.random.default_rng(0)
    f = build_tables(8, 8, 1, 0)
    freq = torch.from_numpy(f.copy()).to(DEV)
    cum = torch.from_numpy(cumulative(f)[:, :-1].copy()).to(DEV)
    lut = slot_lut(freq)
    for lanes, n, n_words in [(16, 100, 40), (5, 23, 0), (64, 64, 200)]:
        x0 = torch.from_numpy(rng.integers(1 << 16, 1 << 32, lanes, dtype=np.int64)).to(DEV)
        words = torch.from_numpy(rng.integers(0, 1 << 16, n_words, dtype=np.int64)).to(DEV)
        tid = torch.from_numpy(rng.integers(0, f.shape[0], n, dtype=np.int64)).to(DEV)
        xa, xb = x0.clone(), x0.clone()
        pa, pb = torch.zeros(1, dtype=torch.int64, device=DEV), torch.zeros(1, dtype=torch.int64, device=DEV)
        sa = decode_segment(xa, pa, words, tid, lut, freq, cum, lanes)
        sb = decode_segment_ref(xb, pb, words, tid, lut, freq, cum, lanes)
        assert torch.equal(sa, sb) and torch.equal(xa, xb) and torch.equal(pa, pb)
