"""The interleaved rANS reference coder and the raw bit stream: round trips, exact sizes, corruption."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reprise_gpu.codec.format import RANS_L, Status
from reprise_gpu.codec.rans import BitReader, CodecError, RansDecoder, pack_bits, rans_encode


def decode_all(states, words, n, lanes, pb, freqs, spans=None):
    """Decode n symbols coded under one static table `freqs`."""
    cum = np.concatenate([[0], np.cumsum(freqs)])
    lut = np.repeat(np.arange(len(freqs)), freqs)
    dec = RansDecoder(states, words, n, lanes, pb, spans=spans)
    out = np.empty(n, np.int64)
    for t in range(dec.steps):
        lo, hi = dec.span(t)
        s = lut[dec.slots(t).astype(np.int64)]
        out[lo:hi] = s
        dec.advance(t, cum[s], freqs[s])
    dec.finish()
    return out


@st.composite
def messages(draw):
    pb = draw(st.integers(1, 16))
    M = 1 << pb
    nsym = draw(st.integers(1, min(M, 40)))
    cuts = sorted(draw(st.lists(st.integers(1, M - 1), min_size=nsym - 1, max_size=nsym - 1, unique=True)))
    freqs = np.diff([0, *cuts, M]).astype(np.int64)
    n = draw(st.integers(0, 300))
    syms = np.array(draw(st.lists(st.integers(0, nsym - 1), min_size=n, max_size=n)), dtype=np.int64)
    lanes = draw(st.integers(1, 17))
    return pb, freqs, syms, lanes


@settings(max_examples=200, deadline=None)
@given(messages())
def test_round_trip_property(msg):
    pb, freqs, syms, lanes = msg
    cum = np.concatenate([[0], np.cumsum(freqs)])
    states, words = rans_encode(cum[syms], freqs[syms], lanes, pb)
    assert states.dtype == np.uint32 and words.dtype == np.uint16
    assert np.array_equal(decode_all(states, words, syms.size, lanes, pb, freqs), syms)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=8), st.integers(1, 9))
def test_round_trip_with_segment_spans(seg_sizes, lanes):
    rng = np.random.default_rng(sum(seg_sizes) + lanes)
    freqs = np.array([1 << 14, 1 << 13, (1 << 13) - 1, 1])
    syms = rng.integers(0, 4, sum(seg_sizes))
    spans, base = [], 0
    for n in seg_sizes:
        spans += [(base + a, base + min(a + lanes, n)) for a in range(0, n, lanes)]
        base += n
    cum = np.concatenate([[0], np.cumsum(freqs)])
    states, words = rans_encode(cum[syms], freqs[syms], lanes, 15, spans=spans)
    assert np.array_equal(decode_all(states, words, syms.size, lanes, 15, freqs, spans=spans), syms)


def test_exact_sizes_of_tiny_messages():
    # Nothing but the final states for a message that fits in them; equiprobable bits cost 1 bit each.
    freqs = np.array([1 << 14, 1 << 14])
    states, words = rans_encode(np.array([0, 1 << 14, 0]), np.array([1 << 14] * 3), 1, 15)
    # x = L; each symbol doubles x (f = M/2) and symbol 1 adds 2^14: ((2L) * 2 + 2^14) * 2
    assert words.size == 0 and states.tolist() == [((2 * RANS_L) * 2 + (1 << 14)) * 2]
    syms = np.array([1, 0, 1] * 8)   # 24 bits: the state overflows once
    states, words = rans_encode(np.where(syms, 1 << 14, 0), np.full(24, 1 << 14), 1, 15)
    assert words.size == 1
    assert np.array_equal(decode_all(states, words, 24, 1, 15, freqs), syms)


def test_empty_message():
    states, words = rans_encode(np.zeros(0, np.int64), np.zeros(0, np.int64), 4, 15)
    assert states.tolist() == [RANS_L] * 4 and words.size == 0
    assert decode_all(states, words, 0, 4, 15, np.array([1 << 15])).size == 0


def test_corrupt_streams_raise_codec_errors():
    rng = np.random.default_rng(0)
    freqs = np.array([20000, 10000, 2767, 1])
    cum = np.concatenate([[0], np.cumsum(freqs)])
    syms = rng.choice(4, 5000, p=[0.6, 0.3, 0.0999, 0.0001])
    states, words = rans_encode(cum[syms], freqs[syms], 8, 15)
    with pytest.raises(CodecError) as e:
        decode_all(states, words[:-3], syms.size, 8, 15, freqs)       # truncated
    assert e.value.status == Status.CORRUPT
    bad = words.copy()
    bad[len(bad) // 2] ^= 0x40
    with pytest.raises(CodecError):
        decode_all(states, bad, syms.size, 8, 15, freqs)              # flipped bit: final state check fails
    with pytest.raises(CodecError):
        RansDecoder(np.array([5] * 8, np.uint32), words, syms.size, 8, 15)   # states below L


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 32), st.integers(0, 2**32 - 1)), max_size=60))
def test_bit_stream_round_trip(fields):
    lens = np.array([n for n, _ in fields], np.int64)
    vals = np.array([v & ((1 << n) - 1) for n, v in fields], np.uint64)
    data = pack_bits(vals, lens)
    assert len(data) == (int(lens.sum()) + 7) // 8
    r = BitReader(data)
    half = len(fields) // 2
    got = np.concatenate([r.read(lens[:half]), r.read(lens[half:])])
    r.finish()
    assert np.array_equal(got, vals)


def test_bit_stream_is_msb_first_and_checked():
    assert pack_bits(np.array([1, 0b101]), np.array([1, 3])) == bytes([0b11010000])
    r = BitReader(bytes([0b11010000]))
    with pytest.raises(CodecError):
        r.read(np.array([9]))
    r = BitReader(bytes([0b11010001]))
    r.read(np.array([4]))
    with pytest.raises(CodecError):
        r.finish()                                       # non-zero padding
