"""The spec-v2 GPU coder (codec/gpu.py, Triton kernels) against the NumPy reference (spec2.py), both ways:
GPU-encoded bytes equal NumPy's and decode with it; NumPy-encoded chunks decode on the GPU coder to the same
bits; hostile bytes give statuses, never exceptions or wrong values.

Without CUDA the kernels run in Triton's interpreter on CPU tensors (small chunks: CI stays cheap); on
the H200 the same tests run on the GPU at larger shapes (BIG)."""

import json
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_codec_spec import FP, adversarial_values, bf16_bits, bf16_values, sample
from test_codec_vectors import DIR as VECTORS

from reprise_gpu.codec import gpu
from reprise_gpu.codec.format import Status
from reprise_gpu.codec.fp8cache import Fp8Kv, quantize_fp8
from reprise_gpu.codec.spec import FixedPredictions
from reprise_gpu.codec.spec2 import decode_chunk_v2, encode_chunk_v2

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")
BIG = CUDA                                   # shapes the interpreter would take minutes for


class Tensors:
    def __init__(self, pred: np.ndarray, all_at_once: bool = False):
        self.pred = torch.from_numpy(np.ascontiguousarray(pred)).to(DEV)
        self.seen = []
        if all_at_once:
            self.all_predictions = self.pred

    def predict(self, layer):
        return self.pred[layer]

    def observe(self, layer, values):
        self.seen.append(values.cpu())


def shape_args(pred, token_start=5):
    L, _, KH, T, D = pred.shape
    return dict(fingerprint=FP, layers=L, kv_heads=KH, head_dim=D, token_start=token_start,
                token_end=token_start + T)


def gpu_target(target):
    if isinstance(target, Fp8Kv):
        return torch.from_numpy(target.codes.copy()).to(DEV), torch.from_numpy(target.exps.copy()).to(DEV)
    return torch.from_numpy(target.view(np.int16).copy()).to(DEV)


def check_both_ways(target, pred, model="improved", block_steps=None, all_at_once=False):
    """GPU bytes == NumPy bytes; each decodes with the other coder to the target."""
    ref = encode_chunk_v2(target, pred, fingerprint=FP, token_start=5, model=model, block_steps=block_steps)
    got = gpu.encode_v2(gpu_target(target), torch.from_numpy(pred).to(DEV), fingerprint=FP, token_start=5,
                        model=model, block_steps=block_steps)
    assert got == ref
    back = decode_chunk_v2(got, FixedPredictions(pred), **shape_args(pred))
    res = gpu.decode_v2(ref, Tensors(pred, all_at_once), device=DEV, **shape_args(pred))
    assert back.ok and res.ok, (back.message, res.message)
    if isinstance(target, Fp8Kv):
        assert np.array_equal(back.values.codes, target.codes) and np.array_equal(back.values.exps, target.exps)
        assert np.array_equal(res.values[0].cpu().numpy(), target.codes)
        assert np.array_equal(res.values[1].cpu().numpy(), target.exps)
    else:
        assert np.array_equal(back.values, target)
        assert np.array_equal(res.values.cpu().numpy().view(np.uint16), target)
    return ref


@pytest.mark.parametrize("model,steps,T,all_at_once", [("improved", None, 9, False), ("baseline", 2, 17, True),
                                                        ("improved", 3, 0, False)])
def test_bf16_both_ways(model, steps, T, all_at_once):
    target, pred = sample(T=T, seed=T)
    check_both_ways(target, pred, model, steps, all_at_once)


def test_fp8_both_ways():
    target, pred = sample(T=11, seed=4)
    check_both_ways(quantize_fp8(bf16_values(target)), pred, block_steps=2)


def test_adversarial_values_both_ways():
    rng = np.random.default_rng(7)
    shape = (1, 2, 2, 5, 16)
    n = int(np.prod(shape))
    x = adversarial_values(n, rng).reshape(shape)
    target = bf16_bits(x)
    target.reshape(-1)[:4] = [0x7FC1, 0xFF81, 0x8000, 0x0001]
    pred = np.where(rng.random(shape) < 0.5, x, adversarial_values(n, rng).reshape(shape)).astype(np.float32)
    check_both_ways(target, pred, block_steps=2)
    q = quantize_fp8(np.nan_to_num(x, nan=1.0, posinf=2.0, neginf=-2.0))
    q.codes.reshape(-1)[:3] = [0x7F, 0xFF, 0x80]
    check_both_ways(q, pred, block_steps=2)


@pytest.mark.skipif(not BIG, reason="CUDA only: SmolLM2-shaped chunks")
@pytest.mark.parametrize("T,steps", [(256, None), (1000, 1024), (77, 64)])
def test_model_shaped_chunks_both_ways(T, steps):
    target, pred = sample(L=30, KH=3, T=T, D=64, seed=T, noise=0.02)
    check_both_ways(target, pred, block_steps=steps)
    check_both_ways(quantize_fp8(bf16_values(target)), pred, block_steps=steps)


def test_observes_each_layer_before_predicting_the_next():
    target, pred = sample(L=3, T=7)
    data = encode_chunk_v2(target, pred, fingerprint=FP, token_start=5)
    p = Tensors(pred)
    res = gpu.decode_v2(data, p, device=DEV, **shape_args(pred))
    assert res.ok and len(p.seen) == 3
    for layer, v in enumerate(p.seen):
        assert np.array_equal((v.numpy().view(np.uint32) >> 16).astype(np.uint16), target[layer])


def test_search_and_lut_decoders_agree():
    target, pred = sample(T=13, seed=2)
    data = encode_chunk_v2(target, pred, fingerprint=FP, token_start=5, block_steps=2)
    a = gpu.decode_v2(data, Tensors(pred), device=DEV, lut=True, **shape_args(pred))
    b = gpu.decode_v2(data, Tensors(pred), device=DEV, lut=False, **shape_args(pred))
    assert a.ok and b.ok and torch.equal(a.values, b.values)


def test_committed_v2_vectors():
    manifest = json.load(open(os.path.join(VECTORS, "manifest-v2.json")))
    cases = [c for c in manifest["cases"] if c.get("format") == "spec-v2"]
    assert cases, "spec-v2 vectors missing from the manifest"
    read = lambda fn: open(os.path.join(VECTORS, fn), "rb").read()   # noqa: E731
    for case in cases:
        shape = tuple(case["shape"])
        pred = np.frombuffer(read(case["pred"]), "<f4").reshape(shape).copy()
        res = gpu.decode_v2(read(case["chunk"]), Tensors(pred), device=DEV, fingerprint=case["fingerprint"],
                            layers=shape[0], kv_heads=shape[2], head_dim=shape[4], token_start=case["token_start"],
                            token_end=case["token_start"] + shape[3])
        assert res.ok, (case["name"], res.message)
        if case["mode"] == "fp8":
            codes = np.frombuffer(read(case["codes"]), np.uint8).reshape(shape)
            assert np.array_equal(res.values[0].cpu().numpy(), codes), case["name"]
        else:
            target = np.frombuffer(read(case["target"]), "<u2").reshape(shape)
            assert np.array_equal(res.values.cpu().numpy().view(np.uint16), target), case["name"]


def statuses(data, pred):
    ref = decode_chunk_v2(data, FixedPredictions(pred), **shape_args(pred))
    got = gpu.decode_v2(data, Tensors(pred), device=DEV, **shape_args(pred))
    return ref, got


def test_hostile_bytes_give_statuses():
    target, pred = sample(T=20)
    data = encode_chunk_v2(target, pred, fingerprint=FP, token_start=5, block_steps=2)
    for bad in (data[:40], data[:-1], data + b"\0", b"RPKV" + data[4:], b"", data[:4] + b"\x03\x00" + data[6:]):
        ref, got = statuses(bad, pred)
        assert got.status == ref.status != Status.OK
    assert statuses(data, pred * 1.01)[1].status in (Status.VALUE_CHECKSUM, Status.CORRUPT)


@settings(max_examples=4 if not CUDA else 200, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 255))
def test_flipped_byte_never_decodes_to_other_values(pos, flip):
    """spec-v2 has no payload hash of its own: any byte may change. The result is a status, or exactly the target."""
    target, pred = sample(T=6, seed=3)
    data = bytearray(encode_chunk_v2(target, pred, fingerprint=FP, token_start=5, block_steps=2))
    data[6 + pos % (len(data) - 6)] ^= flip
    ref, got = statuses(bytes(data), pred)
    assert isinstance(got.status, Status) and isinstance(ref.status, Status)
    for r in (ref, got):
        if r.ok:
            v = r.values if isinstance(r.values, np.ndarray) else r.values.cpu().numpy().view(np.uint16)
            assert np.array_equal(v, target)
