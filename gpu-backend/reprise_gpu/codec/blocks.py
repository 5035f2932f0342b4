"""spec-v2 streams in NumPy (the reference): independent rANS blocks, per-block raw bit regions, values hash.

A segment's n values are cut into blocks of BLOCK_LANES * S values (S = the chunk's block_steps; the last
block of a segment may be shorter). Inside a block, value i is on lane i % 32 at step i // 32, and the
block is exactly a spec-v1 rANS stream with 32 lanes (rans.py): its own 32 initial states, its own words
(step by step, renormalizing lanes in lane order). Its raw bits are its own region: the low bits of its
wide buckets (value order), then its refinement/escape fields (value order). A block table gives each
block's word count and low/ref bit counts, so a GPU decoder starts every block at once (spec-v1 has one
word stream over all lanes: each step needs every lane's renormalization count before the next step, so
one thread block decodes the whole chunk).

Arrays are "blocked": [n_blocks, S, 32] with `active` marking real values (the last block's tail is padding).
"""

from __future__ import annotations

import numpy as np

from .format import BLOCK_LANES, HASH_C1, HASH_C2, HASH_GOLDEN, RANS_L, RANS_WORD_BITS, Status
from .rans import CodecError, pack_bits

U64 = np.uint64


def n_blocks(n_seg: int, steps: int) -> int:
    return -(-n_seg // (BLOCK_LANES * steps))


def blocked(a: np.ndarray, n_segments: int, n_seg: int, steps: int, fill=0) -> np.ndarray:
    """Flat per-value array of n_segments segments -> [n_segments * n_blocks, steps, 32], padded with `fill`."""
    nb = n_blocks(n_seg, steps)
    out = np.full((n_segments, nb * steps * BLOCK_LANES), fill, dtype=a.dtype)
    out[:, :n_seg] = a.reshape(n_segments, n_seg)
    return out.reshape(n_segments * nb, steps, BLOCK_LANES)


def unblocked(a: np.ndarray, n_segments: int, n_seg: int) -> np.ndarray:
    return a.reshape(n_segments, -1)[:, :n_seg].reshape(-1)


def rans_encode_blocks(start: np.ndarray, freq: np.ndarray, active: np.ndarray, prob_bits: int):
    """Blocked (start, freq) -> (states u32 [B, 32], words u16 in block/step/lane order, words per block [B]).

    Each block is coded exactly as rans.rans_encode(..., lanes=32) codes it; the blocks run side by side.
    """
    B, S, W = start.shape
    x = np.full((B, W), RANS_L, U64)
    pb, wb, wmask = U64(prob_bits), U64(RANS_WORD_BITS), U64((1 << RANS_WORD_BITS) - 1)
    emit = np.zeros((B, S, W), bool)
    word = np.zeros((B, S, W), np.uint16)
    for s in range(S - 1, -1, -1):
        a = active[:, s]
        f = np.where(a, freq[:, s], 1).astype(U64)
        e = a & (x >= (f << U64(32 - prob_bits)))
        emit[:, s] = e
        word[:, s] = (x & wmask).astype(np.uint16)
        xs = np.where(e, x >> wb, x)
        q, r = np.divmod(xs, f)
        x = np.where(a, (q << pb) + r + start[:, s].astype(U64), x)
    return x.astype(np.uint32), word[emit], emit.sum(axis=(1, 2)).astype(np.int64)


class BlockRansDecoder:
    """The blocks of one segment decoded side by side, one step (32 lanes per block) at a time."""

    def __init__(self, states: np.ndarray, words: np.ndarray, word_base: np.ndarray, n_words: np.ndarray,
                 prob_bits: int):
        if states.size and int(states.min()) < RANS_L:
            raise CodecError(Status.CORRUPT, "rANS initial state out of range")
        self.x = states.astype(U64)                       # [nb, 32]
        self.words, self.base, self.n = words.astype(U64), word_base, n_words
        self.ptr = np.zeros(len(n_words), np.int64)
        self.pb, self.mask = U64(prob_bits), U64((1 << prob_bits) - 1)

    def slots(self) -> np.ndarray:
        return (self.x & self.mask).astype(np.int64)

    def advance(self, active: np.ndarray, start: np.ndarray, freq: np.ndarray) -> None:
        x = self.x
        xn = freq.astype(U64) * (x >> self.pb) + ((x & self.mask) - start.astype(U64))
        need = active & (xn < U64(RANS_L))
        before = np.cumsum(need, axis=1) - need
        idx = self.base[:, None] + self.ptr[:, None] + before
        if bool(np.any(need & (self.ptr[:, None] + before >= self.n[:, None]))):
            raise CodecError(Status.CORRUPT, "rANS block stream ended early")
        w = self.words[np.where(need, idx, 0)] if self.words.size else np.zeros_like(xn)
        xn = np.where(need, (xn << U64(RANS_WORD_BITS)) | w, xn)
        self.x = np.where(active, xn, x)
        self.ptr += need.sum(axis=1)

    def finish(self) -> None:
        if bool(np.any(self.ptr != self.n)) or bool(np.any(self.x != U64(RANS_L))):
            raise CodecError(Status.CORRUPT, "rANS block did not end in the initial state")


def pack_raw_blocks(low, low_len, ref, ref_len, block_of: np.ndarray) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Per-value raw fields (value order) -> (raw bytes, low bits per block, ref bits per block).

    block_of: [n] the block of each value (non-decreasing). Layout: block by block, its lows then its refs.
    """
    nb = int(block_of[-1]) + 1 if block_of.size else 0
    kind = np.concatenate([np.zeros(low.size, np.int64), np.ones(ref.size, np.int64)])
    key = np.concatenate([block_of, block_of]) * 2 + kind
    order = np.argsort(key, kind="stable")
    vals = np.concatenate([low, ref]).astype(U64)[order]
    lens = np.concatenate([low_len, ref_len]).astype(np.int64)[order]
    n_low = np.bincount(block_of, low_len, minlength=nb).astype(np.int64)
    n_ref = np.bincount(block_of, ref_len, minlength=nb).astype(np.int64)
    return pack_bits(vals, lens), n_low, n_ref


def read_bits_at(buf: np.ndarray, off: np.ndarray, nbits: np.ndarray) -> np.ndarray:
    """Fields of nbits (0..32) at bit offsets off (MSB first); buf: the stream as uint64 bytes + 8 zero bytes.
    The caller has checked off + nbits <= the stream's length."""
    byte = off >> 3
    win = np.zeros(off.size, U64)                      # a 40-bit window holds any 32-bit field
    for j in range(5):
        win = (win << U64(8)) | buf[byte + j]
    sh = (40 - (off & 7) - nbits).astype(U64)
    return (win >> sh) & ((U64(1) << nbits.astype(U64)) - U64(1))


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer of z + golden ratio (a bijection of u64): one value's term of the values hash."""
    z = z.astype(U64) + U64(HASH_GOLDEN)
    z = (z ^ (z >> U64(30))) * U64(HASH_C1)
    z = (z ^ (z >> U64(27))) * U64(HASH_C2)
    return z ^ (z >> U64(31))


def values_hash(codes: np.ndarray, exps: np.ndarray | None = None) -> int:
    """sum_i mix64(i << 16 | v_i) mod 2^64 over the raw-bf16 payload's values in order (BF16), or over
    the FP8 codes then the row exponents (as bytes). An order-free sum: GPU blocks add their parts in
    any order. mix64 is a bijection, so a single wrong value always changes the hash."""
    v = codes.reshape(-1).astype(U64)
    if exps is not None:
        v = np.concatenate([v, exps.reshape(-1).astype(np.int64).astype(U64) & U64(0xFF)])
    i = np.arange(v.size, dtype=U64)
    with np.errstate(over="ignore"):
        return int(mix64((i << U64(16)) | v).sum(dtype=U64))
