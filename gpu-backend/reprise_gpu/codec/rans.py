"""Interleaved rANS over integer frequency tables, plus a raw bit stream. Reference coder in NumPy.

Range-asymmetric numeral systems: J. Duda, "Asymmetric numeral systems: entropy coding combining speed
of Huffman coding with compression rate of arithmetic coding", arXiv:1311.2540 (2013); interleaving as in
F. Giesen, "Interleaved entropy coders", arXiv:1402.3392 (2014).

Every operation is on unsigned integers, so any implementation (wasm, CUDA) can match it bit for bit.

Layout. `n` symbols in a flat order are coded by `lanes` independent rANS states; symbol i belongs to
step i // lanes and lane i % lanes (the last step may be partial: lanes 0..k-1). Decoding runs the steps
in order 0, 1, ...; within a step all lanes advance together, which is what NumPy vectorizes (and what a
GPU warp would do). State x is a u32 in [L, 2^32) with L = 2^16; renormalization moves one 16-bit word.

Decoding step t, for each active lane j in increasing order:
    slot = x & (M - 1)                  # M = 2^prob_bits
    s, f = the symbol whose [start, start + freq) holds slot
    x = f * (x >> prob_bits) + slot - s # < 2^32
    if x < L: x = (x << 16) | words[ptr++]

The encoder runs the same steps backwards; for each step it first emits the low 16 bits of every lane
with x >= f << (32 - prob_bits) (in lane order; those are the words the decoder reads in that step),
then x = ((x // f) << prob_bits) + x % f + s. Stream = final encoder states (u32 per lane), then the
words of step 0, step 1, ... The decoder ends with every state back at L and every word consumed,
a free integrity check.
"""

from __future__ import annotations

import numpy as np

from .format import RANS_L, RANS_WORD_BITS, Status


class CodecError(Exception):
    """Raised inside the decoder for malformed input; the chunk decoder turns it into a status."""

    def __init__(self, status: Status, message: str):
        super().__init__(message)
        self.status = status


def default_spans(n: int, lanes: int) -> list[tuple[int, int]]:
    return [(a, min(a + lanes, n)) for a in range(0, n, lanes)]


def rans_encode(start: np.ndarray, freq: np.ndarray, lanes: int, prob_bits: int,
                spans: list[tuple[int, int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Code symbol i with interval [start[i], start[i] + freq[i]) of M = 2^prob_bits.

    start, freq: [n] integer arrays, 1 <= freq, start + freq <= M.
    spans: the steps, consecutive [lo, hi) covering [0, n), each at most `lanes` long (step t's symbols go
    to lanes 0 .. hi-lo-1); default: n split every `lanes` symbols. spec-v1 starts a step at every segment.
    Returns (states u32 [lanes], words u16 [w]) — the decoder's initial states and its word stream.
    """
    n = int(start.size)
    spans = default_spans(n, lanes) if spans is None else spans
    assert freq.size == n and lanes >= 1 and 1 <= prob_bits <= 16
    start = np.ascontiguousarray(start, dtype=np.uint64)
    freq = np.ascontiguousarray(freq, dtype=np.uint64)
    if n and (int(freq.min()) < 1 or int((start + freq).max()) > (1 << prob_bits)):
        raise ValueError("frequency out of range")
    xmax = freq << np.uint64(32 - prob_bits)            # renormalize when x >= f * 2^(32 - prob_bits)
    x = np.full(lanes, RANS_L, dtype=np.uint64)
    steps = len(spans)
    out: list[np.ndarray] = [None] * steps  # type: ignore[list-item]
    pb = np.uint64(prob_bits)
    wb = np.uint64(RANS_WORD_BITS)
    wmask = np.uint64((1 << RANS_WORD_BITS) - 1)
    for t in range(steps - 1, -1, -1):
        lo, hi = spans[t]
        k = hi - lo
        xs = x[:k]
        emit = xs >= xmax[lo:hi]
        out[t] = (xs[emit] & wmask).astype(np.uint16)
        xs = np.where(emit, xs >> wb, xs)
        f = freq[lo:hi]
        q, r = np.divmod(xs, f)
        x[:k] = (q << pb) + r + start[lo:hi]
    words = np.concatenate(out) if steps else np.zeros(0, np.uint16)
    return x.astype(np.uint32), words


class RansDecoder:
    """Step-by-step decoder; the caller supplies each step's (start, freq) from the slots it is shown.

    Usage per step t: `slot = dec.slots(t)`; look the symbols up; `dec.advance(t, start, freq)`.
    Malformed streams raise CodecError(status); `finish()` checks the final invariant.
    """

    def __init__(self, states: np.ndarray, words: np.ndarray, n: int, lanes: int, prob_bits: int,
                 spans: list[tuple[int, int]] | None = None):
        self.x = states.astype(np.uint64)
        self.words = words.astype(np.uint64)
        self.n, self.lanes, self.pb = n, lanes, np.uint64(prob_bits)
        self.mask = np.uint64((1 << prob_bits) - 1)
        self.ptr = 0
        self.spans = default_spans(n, lanes) if spans is None else spans
        self.steps = len(self.spans)
        if self.x.size != lanes or (lanes and (int(self.x.min()) < RANS_L)):
            raise CodecError(Status.CORRUPT, "rANS initial state out of range")

    def span(self, t: int) -> tuple[int, int]:
        return self.spans[t]

    def slots(self, t: int) -> np.ndarray:
        lo, hi = self.span(t)
        return self.x[: hi - lo] & self.mask

    def advance(self, t: int, start: np.ndarray, freq: np.ndarray) -> None:
        lo, hi = self.span(t)
        k = hi - lo
        xs = self.x[:k]
        xs = freq.astype(np.uint64) * (xs >> self.pb) + ((xs & self.mask) - start.astype(np.uint64))
        need = xs < RANS_L
        c = int(np.count_nonzero(need))
        if self.ptr + c > self.words.size:
            raise CodecError(Status.CORRUPT, "rANS stream ended early")
        xs[need] = (xs[need] << np.uint64(RANS_WORD_BITS)) | self.words[self.ptr:self.ptr + c]
        self.ptr += c
        self.x[:k] = xs

    def finish(self) -> None:
        if self.ptr != self.words.size or (self.lanes and bool(np.any(self.x != RANS_L))):
            raise CodecError(Status.CORRUPT, "rANS stream did not end in the initial state")


def pack_bits(values: np.ndarray, nbits: np.ndarray) -> bytes:
    """Concatenate the low nbits[i] bits of values[i], most significant bit first, zero-padded to bytes.

    values: [n] unsigned ints; nbits: [n] ints in 0..32.
    """
    nbits = np.asarray(nbits, dtype=np.int64)
    total = int(nbits.sum())
    if total == 0:
        return b""
    keep = nbits > 0
    v = np.asarray(values, dtype=np.uint64)[keep]
    nb = nbits[keep]
    ends = np.cumsum(nb)
    owner = np.repeat(np.arange(nb.size), nb)                # which field each output bit belongs to
    pos_in_field = np.arange(total) - np.repeat(ends - nb, nb)
    sh = (nb[owner] - 1 - pos_in_field).astype(np.uint64)    # MSB first
    bits = ((v[owner] >> sh) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits).tobytes()


class BitReader:
    """Reads fields written by pack_bits, a batch at a time, in the same order."""

    def __init__(self, data: bytes):
        self.nbits_total = len(data) * 8
        self.buf = np.frombuffer(bytes(data) + b"\0" * 8, dtype=np.uint8).astype(np.uint64)
        self.pos = 0

    def read(self, nbits: np.ndarray) -> np.ndarray:
        """Read one field per entry of nbits (ints in 0..32), in order; returns u64 values."""
        nbits = np.asarray(nbits, dtype=np.int64)
        ends = np.cumsum(nbits)
        total = int(ends[-1]) if nbits.size else 0
        if self.pos + total > self.nbits_total:
            raise CodecError(Status.CORRUPT, "raw bit stream ended early")
        off = self.pos + ends - nbits
        self.pos += total
        byte = off >> 3
        win = np.zeros(nbits.size, dtype=np.uint64)             # 40-bit window holds any 32-bit field
        for j in range(5):
            win = (win << np.uint64(8)) | self.buf[byte + j]
        sh = (40 - (off & 7) - nbits).astype(np.uint64)
        mask = (np.uint64(1) << nbits.astype(np.uint64)) - np.uint64(1)
        return (win >> sh) & mask

    def finish(self) -> None:
        # Only zero padding may follow the last field, and less than a byte of it.
        if self.nbits_total - self.pos >= 8:
            raise CodecError(Status.CORRUPT, "raw bit stream has trailing bytes")
        rest = self.nbits_total - self.pos
        if rest and int(self.buf[self.pos >> 3]) & ((1 << rest) - 1):
            raise CodecError(Status.CORRUPT, "raw bit stream padding is not zero")
