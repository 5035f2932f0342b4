"""spec-v1 chunks: exact round trips (BF16 and FP8-cache), adversarial values, hostile bytes."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reprise_gpu.codec.format import Status
from reprise_gpu.codec.fp8cache import Fp8Kv, quantize_fp8, row_exponents
from reprise_gpu.codec.grid import BF16, E4M3, from_grid, pred_exponent, sanitize_prediction, to_grid
from reprise_gpu.codec.spec import FixedPredictions, decode_chunk, encode_chunk

FP = "test-predictor"


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> BF16 bit patterns, round to nearest even (NaN kept NaN)."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    r = np.where(np.isnan(x), (u >> 16) | 0x40, r)
    return r.astype(np.uint16)


def bf16_values(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def sample(L=2, KH=2, T=9, D=8, seed=0, noise=0.03):
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.normal(0, 1.5, (L, 2, KH, 1, D)))
    x = (rng.standard_normal((L, 2, KH, T, D)) * scale).astype(np.float32)
    pred = (x + noise * scale * rng.standard_normal(x.shape)).astype(np.float32)
    return bf16_bits(x), pred


def roundtrip(target, pred, model="improved", lanes=None, **kw):
    L, _, KH, T, D = pred.shape
    data = encode_chunk(target, pred, fingerprint=FP, token_start=5, model=model, lanes=lanes)
    res = decode_chunk(data, FixedPredictions(pred), fingerprint=FP, layers=L, kv_heads=KH, head_dim=D,
                       token_start=5, token_end=5 + T)
    assert res.status == Status.OK, res.message
    return data, res.values


@pytest.mark.parametrize("fmt", [BF16, E4M3], ids=lambda f: f.name)
def test_grid_maps_every_bit_pattern_back(fmt):
    bits = np.arange(1 << fmt.raw_bits, dtype=np.int64)
    for p in [0.0, 1e-30, 3e-3, -0.7, 1.0, 5.5, -300.0, 1e30, float("nan")]:
        pv = sanitize_prediction(np.full(bits.size, p, np.float32), fmt)
        for bump in (0, 3, 11):
            G = np.clip(pred_exponent(pv, fmt) + bump, 1, fmt.exp_max)
            k, ref, j, esc = to_grid(bits, G, fmt)
            back, valid = from_grid(np.where(esc, 1, k), ref, G, fmt)
            assert np.array_equal(back[~esc], bits[~esc]) and valid[~esc].all()
            neg, E = bits >> (fmt.raw_bits - 1), (bits >> fmt.mant_bits) & ((1 << (fmt.raw_bits - 1 - fmt.mant_bits)) - 1)
            nan = (E == fmt.exp_max) & ((bits & 7) == 7) if fmt is E4M3 else E > fmt.exp_max
            assert esc[nan].all()


@pytest.mark.parametrize("model", ["baseline", "improved"])
def test_bf16_round_trip_bits(model):
    target, pred = sample()
    data, got = roundtrip(target, pred, model)
    assert got.dtype == np.uint16 and np.array_equal(got, target)
    assert len(data) * 8 / target.size < 16


def test_fp8_round_trip_codes_and_scales():
    target, pred = sample(seed=1)
    q = quantize_fp8(bf16_values(target))
    _, got = roundtrip(q, pred)
    assert np.array_equal(got.codes, q.codes) and np.array_equal(got.exps, q.exps)


def test_fp8_quantizer_scales_are_tight_powers_of_two():
    a = np.array([0.0, 448.0, 449.0, 1.0, 3e-38, 2.0 ** -140, np.inf], np.float32)
    e = row_exponents(a)
    assert e.tolist()[:4] == [-127, 0, 1, -8]
    ef = e[:6].astype(float)
    assert np.all(a[:6] <= 448 * 2.0 ** ef)
    tight = ef > -127                                   # the smallest exponent is a clamp
    assert np.all(a[:6][tight] > 448 * 2.0 ** (ef[tight] - 1)) and e[6] == 127


def adversarial_values(n, rng):
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, -1e-42, 3.4e38, -3.3e38, 1e-38, 65504.0],
                       np.float32)
    x = rng.standard_normal(n).astype(np.float32)
    idx = rng.integers(0, n, n // 3)
    x[idx] = rng.choice(special, idx.size)
    with np.errstate(over="ignore"):
        x[rng.integers(0, n, n // 10)] *= np.float32(1e6)
    return x


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adversarial_targets_and_predictions(seed):
    rng = np.random.default_rng(seed)
    shape = (2, 2, 3, 7, 16)
    n = int(np.prod(shape))
    x = adversarial_values(n, rng).reshape(shape)
    target = bf16_bits(x)
    target.reshape(-1)[:4] = [0x7FC1, 0xFF81, 0x8000, 0x0001]   # NaN payloads, -0, smallest subnormal
    pred = np.where(rng.random(shape) < 0.5, x, adversarial_values(n, rng).reshape(shape)).astype(np.float32)
    _, got = roundtrip(target, pred)
    assert np.array_equal(got, target)
    q = quantize_fp8(np.nan_to_num(x, nan=1.0, posinf=2.0, neginf=-2.0))
    q.codes.reshape(-1)[:3] = [0x7F, 0xFF, 0x80]              # NaN codes and -0 in the cache itself
    _, got = roundtrip(q, pred)
    assert np.array_equal(got.codes, q.codes) and np.array_equal(got.exps, q.exps)


def test_empty_token_range():
    target = np.zeros((3, 2, 2, 0, 8), np.uint16)
    pred = np.zeros(target.shape, np.float32)
    data, got = roundtrip(target, pred)
    assert got.shape == target.shape
    _, got = roundtrip(Fp8Kv(np.zeros(target.shape, np.uint8), np.zeros(target.shape[:-1], np.int8)), pred)
    assert got.codes.shape == target.shape


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(0, 12), st.sampled_from([1, 2, 4, 8, 16]),
       st.integers(1, 70), st.floats(1e-4, 10.0), st.integers(0, 2**31))
def test_round_trip_property(L, KH, T, D, lanes, noise, seed):
    target, pred = sample(L, KH, T, D, seed, noise)
    _, got = roundtrip(target, pred, lanes=lanes)
    assert np.array_equal(got, target)


def _decode(data, pred, **over):
    L, _, KH, T, D = pred.shape
    kw = dict(fingerprint=FP, layers=L, kv_heads=KH, head_dim=D, token_start=5, token_end=5 + T)
    kw.update(over)
    return decode_chunk(data, FixedPredictions(pred), **kw)


def test_hostile_bytes_give_statuses():
    target, pred = sample(T=20)
    data = encode_chunk(target, pred, fingerprint=FP, token_start=5)
    assert _decode(data, pred).ok
    assert _decode(data[:40], pred).status == Status.TRUNCATED
    assert _decode(data[:-1], pred).status == Status.TRUNCATED
    assert _decode(data + b"\0", pred).status == Status.CORRUPT
    assert _decode(b"RPKV" + data[4:], pred).status == Status.BAD_MAGIC
    assert _decode(b"", pred).status == Status.BAD_MAGIC
    assert _decode(data[:4] + b"\x02\x00" + data[6:], pred).status == Status.BAD_VERSION
    assert _decode(data, pred, fingerprint="other").status == Status.FINGERPRINT_MISMATCH
    assert _decode(data, pred, token_end=30).status == Status.SHAPE_MISMATCH
    for pos in (100, len(data) // 2, len(data) - 40):
        bad = bytearray(data)
        bad[pos] ^= 0x10
        assert _decode(bytes(bad), pred).status == Status.PAYLOAD_CHECKSUM


def test_wrong_prediction_is_never_returned_as_ok():
    target, pred = sample(T=20)
    data = encode_chunk(target, pred, fingerprint=FP, token_start=5)
    other = pred.copy()
    other.reshape(-1)[7] = np.nextafter(other.reshape(-1)[7], np.float32(np.inf))
    res = _decode(data, other)          # may still land on the same grid cells: then it must be exact
    assert res.status in (Status.OK, Status.VALUE_CHECKSUM, Status.CORRUPT)
    assert np.array_equal(res.values, target) if res.ok else res.values is None
    for p in (pred * 1.01, pred[..., ::-1].copy()):
        res = _decode(data, p)
        assert res.status in (Status.VALUE_CHECKSUM, Status.CORRUPT) and res.values is None


def corrupt_and_resign(data: bytes, pos: int, flip: int) -> bytes:
    """XOR one byte after the magic and version with `flip`, then recompute the SHA-256 trailer (an attacker's edit)."""
    import hashlib
    body = bytearray(data[:-32])
    body[6 + pos % (len(body) - 6)] ^= flip
    return bytes(body) + hashlib.sha256(bytes(body)).digest()


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 255))
def test_corrupt_but_checksummed_bytes_never_crash(pos, flip):
    """An attacker who recomputes the trailer still only gets a status (never an exception, never OK-garbage)."""
    target, pred = sample(T=6, seed=3)
    data = encode_chunk(target, pred, fingerprint=FP, token_start=5)
    res = _decode(corrupt_and_resign(data, pos, flip), pred)
    assert isinstance(res.status, Status)
    if res.ok:
        assert np.array_equal(res.values, target)
