"""`spec-v2`: spec-v1's probability model with streams a GPU decodes in parallel (docs/kv-codec-format.md).

    encode_chunk_v2(target, pred, fingerprint=..., token_start=...) -> bytes
    decode_chunk_v2(data, predictor, fingerprint=..., layers=..., ...) -> Decoded(status, values, message)

Same inputs, outputs and predictor protocol as spec.py. What changes is the layout (blocks.py): every
block of 32 * block_steps values has its own rANS states, words and raw bit region, and a u64 values hash
replaces the SHA-256s (the container authenticates the bytes; see the format doc for why). This file is
the NumPy reference; codec/gpu.py is the GPU coder that must produce and accept the same bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from .blocks import (BlockRansDecoder, blocked, n_blocks, pack_raw_blocks, rans_encode_blocks, read_bits_at,
                     unblocked, values_hash)
from .format import BLOCK_LANES, DEFAULT_BLOCK_STEPS, ESCAPE, MAX_BLOCK_STEPS, PROB_BITS, SPEC_MAGIC, SPEC_VERSION_2, Status
from .fp8cache import Fp8Kv, encode_exponents, fp8_values, predicted_exponents, read_exponents
from .grid import BF16, E4M3, from_grid
from .model import MODELS, SegmentParams, layout, reconstruct_lengths
from .rans import BitReader, CodecError
from .spec import (LIMITS, MODES, Decoded, Predictor, _bf16_values, _per_value_scale, _segment_inputs, code_segments,
                   fingerprint_digest, params_bytes, parse_params)
from .tables import build_tables, cumulative

# magic, version, mode, model, fingerprint sha256, layers, kv_heads, head_dim, token_start, token_end,
# block_steps, prob_bits, reserved, values hash
HEAD2 = struct.Struct("<4sHBB32sHHHIIHBBQ")
SIZES = struct.Struct("<III")       # rANS words, raw bytes, FP8 exponent bytes
BLOCK = struct.Struct("<III")       # per block: words, low bits, ref bits


def block_steps_for(n_seg: int, block_steps: int | None) -> int:
    """The encoder's choice: DEFAULT_BLOCK_STEPS, fewer when a whole segment is smaller than a block."""
    s = DEFAULT_BLOCK_STEPS if block_steps is None else int(block_steps)
    return int(max(1, min(s, MAX_BLOCK_STEPS, -(-n_seg // BLOCK_LANES))))


def target_hash(target: np.ndarray | Fp8Kv) -> int:
    if isinstance(target, Fp8Kv):
        return values_hash(target.codes, target.exps)
    return values_hash(np.asarray(target, np.uint16))


def encode_chunk_v2(target: np.ndarray | Fp8Kv, pred: np.ndarray, *, fingerprint: str, token_start: int,
                    model: str = "improved", block_steps: int | None = None, stats: dict | None = None) -> bytes:
    """Code `target` against `pred` (float32 [L, 2, KH, T, D]); returns the spec-v2 bytes."""
    cs = code_segments(target, pred, model, stats)
    L, _, KH, T, D = cs.shape
    n_seg, n_segs = KH * T * D, 2 * L
    S = block_steps_for(n_seg, block_steps)
    active = blocked(np.ones(n_segs * n_seg, bool), n_segs, n_seg, S, False)
    states, words, n_words = rans_encode_blocks(blocked(cs.start, n_segs, n_seg, S), blocked(cs.freq, n_segs, n_seg, S),
                                                active, PROB_BITS)
    cat = {f: np.concatenate([getattr(sy, f) for sy in cs.symbols]) if cs.symbols else np.zeros(0, np.int64)
           for f in ("low", "low_len", "ref", "ref_len")}
    block_of = unblocked(np.broadcast_to(np.arange(active.shape[0])[:, None, None], active.shape), n_segs, n_seg)
    raw, n_low, n_ref = pack_raw_blocks(cat["low"], cat["low_len"], cat["ref"], cat["ref_len"], block_of)
    exp_bytes = encode_exponents(target.exps, pred) if cs.fp8 else b""
    head = HEAD2.pack(SPEC_MAGIC, SPEC_VERSION_2, MODES["fp8" if cs.fp8 else "bf16"], MODELS[model],
                      fingerprint_digest(fingerprint), L, KH, D, token_start, token_start + T, S, PROB_BITS, 0,
                      target_hash(target))
    table = np.stack([n_words, n_low, n_ref], axis=1).astype("<u4").tobytes()
    return b"".join([head, params_bytes(cs.params), SIZES.pack(words.size, len(raw), len(exp_bytes)), table,
                     states.astype("<u4").tobytes(), words.astype("<u2").tobytes(), raw, exp_bytes])


@dataclass
class Parsed2:
    """A spec-v2 chunk whose header, parameters and sizes passed every check; streams still to decode."""
    fp8: bool
    phase: bool
    L: int
    KH: int
    T: int
    D: int
    steps: int                  # block_steps
    blocks_per_seg: int
    params: list[SegmentParams]
    n_words: np.ndarray         # int64 [2L * nb] per block
    n_low: np.ndarray
    n_ref: np.ndarray
    states: np.ndarray          # u32 [2L * nb, 32]
    words: np.ndarray           # u16 [total]
    raw: bytes
    exp_bytes: bytes
    values_hash: int
    offsets: tuple[int, int, int, int] = (0, 0, 0, 0)   # byte offsets of states, words, raw, exponents


def parse_v2(data: bytes, *, fingerprint: str, layers: int, kv_heads: int, head_dim: int, token_start: int,
             token_end: int) -> Parsed2 | Decoded:
    """Every check before the streams: -> Parsed2, or a Decoded with the failing status. Sizes are checked
    with Python integers before any array is made, so a hostile header cannot ask for memory."""
    if len(data) < 4 or data[:4] != SPEC_MAGIC:
        return Decoded(Status.BAD_MAGIC, None, "not a spec chunk")
    if len(data) < 6:
        return Decoded(Status.TRUNCATED, None, "no version")
    if struct.unpack_from("<H", data, 4)[0] != SPEC_VERSION_2:
        return Decoded(Status.BAD_VERSION, None, f"spec version {struct.unpack_from('<H', data, 4)[0]}")
    if len(data) < HEAD2.size:
        return Decoded(Status.TRUNCATED, None, "shorter than the fixed header")
    (_, _, mode, model, fp_digest, L, KH, D, t0, t1, S, prob_bits, reserved, vhash) = HEAD2.unpack_from(data, 0)
    if mode not in MODES.values() or model not in MODELS.values() or prob_bits != PROB_BITS or reserved:
        return Decoded(Status.CORRUPT, None, "unknown mode, model, prob_bits or reserved byte")
    if fp_digest != fingerprint_digest(fingerprint):
        return Decoded(Status.FINGERPRINT_MISMATCH, None, "chunk was coded against another predictor")
    if (L, KH, D, t0, t1) != (layers, kv_heads, head_dim, token_start, token_end):
        return Decoded(Status.SHAPE_MISMATCH, None, f"header {(L, KH, D, t0, t1)} != expected")
    T = t1 - t0
    if not (0 < L <= LIMITS["layers"] and 0 < KH <= LIMITS["kv_heads"] and 0 < D <= LIMITS["head_dim"]
            and 0 <= T <= LIMITS["tokens"] and 1 <= S <= MAX_BLOCK_STEPS):
        return Decoded(Status.CORRUPT, None, "shape or block_steps out of range")
    n_seg = KH * T * D
    nb = n_blocks(n_seg, S)
    n_all = 2 * L * nb
    off = HEAD2.size
    params_len = 2 * L * (4 + KH * D)
    if len(data) < off + params_len + SIZES.size:
        return Decoded(Status.TRUNCATED, None, "model parameters cut short")
    n_words, n_raw, n_exp = SIZES.unpack_from(data, off + params_len)
    total = off + params_len + SIZES.size + n_all * (BLOCK.size + 4 * BLOCK_LANES) + 2 * n_words + n_raw + n_exp
    if len(data) < total:
        return Decoded(Status.TRUNCATED, None, f"{len(data)} bytes, header says {total}")
    if len(data) > total:
        return Decoded(Status.CORRUPT, None, "trailing bytes after the chunk")
    params = parse_params(data, off, 2 * L, KH * D)
    off += params_len + SIZES.size
    table = np.frombuffer(data, "<u4", 3 * n_all, off).reshape(n_all, 3).astype(np.int64)
    off += BLOCK.size * n_all
    if int(table[:, 0].sum()) != n_words or -(-int(table[:, 1:].sum()) // 8) != n_raw:
        return Decoded(Status.CORRUPT, None, "block table disagrees with the stream sizes")
    per_block = np.minimum(BLOCK_LANES * S, n_seg - np.arange(nb) * BLOCK_LANES * S)
    if n_all and bool(np.any(table[:, 0] > np.tile(per_block, 2 * L))):
        return Decoded(Status.CORRUPT, None, "a block has more words than symbols")
    o_states = off
    states = np.frombuffer(data, "<u4", n_all * BLOCK_LANES, off).reshape(n_all, BLOCK_LANES)
    off += 4 * BLOCK_LANES * n_all
    o_words = off
    words = np.frombuffer(data, "<u2", n_words, off)
    off += 2 * n_words
    mv = memoryview(data)                    # views: a GPU decoder copies the streams itself
    return Parsed2(mode == MODES["fp8"], model != MODELS["baseline"], L, KH, T, D, S, nb, params, table[:, 0],
                   table[:, 1], table[:, 2], states, words, mv[off:off + n_raw], mv[off + n_raw:], vhash,
                   (o_states, o_words, off, off + n_raw))


def decode_chunk_v2(data: bytes, predictor: Predictor, *, fingerprint: str, layers: int, kv_heads: int,
                    head_dim: int, token_start: int, token_end: int, payload_verified: bool = False) -> Decoded:
    """Decode a spec-v2 chunk whose shape and range the caller expects; any problem -> a Status.
    (payload_verified is accepted for symmetry with spec-v1: spec-v2 has no payload hash of its own.)"""
    try:
        pc = parse_v2(bytes(data), fingerprint=fingerprint, layers=layers, kv_heads=kv_heads, head_dim=head_dim,
                      token_start=token_start, token_end=token_end)
        if isinstance(pc, Decoded):
            return pc
        return _decode(pc, predictor)
    except CodecError as e:
        return Decoded(e.status, None, str(e))
    except (ValueError, IndexError, OverflowError, struct.error) as e:  # hostile bytes we did not foresee
        return Decoded(Status.CORRUPT, None, f"{type(e).__name__}: {e}")


def _decode(pc: Parsed2, predictor: Predictor) -> Decoded:
    L, KH, T, D, S, nb = pc.L, pc.KH, pc.T, pc.D, pc.steps, pc.blocks_per_seg
    fmt = E4M3 if pc.fp8 else BF16
    n_seg = KH * T * D
    word_base = np.cumsum(pc.n_words) - pc.n_words
    raw_len = pc.n_low + pc.n_ref
    raw_base = np.cumsum(raw_len) - raw_len
    raw_buf = np.frombuffer(bytes(pc.raw) + b"\0" * 8, np.uint8).astype(np.uint64)
    exp_reader = BitReader(pc.exp_bytes)
    out = np.zeros((L, 2, KH, T, D), np.uint8 if pc.fp8 else np.uint16)
    exps = np.zeros((L, 2, KH, T), np.int8) if pc.fp8 else None
    active = blocked(np.ones(n_seg, bool), 1, n_seg, S, False)
    tables: dict = {}
    for layer in range(L):
        pred = np.asarray(predictor.predict(layer), np.float32)
        if pred.shape != (2, KH, T, D):
            raise CodecError(Status.SHAPE_MISMATCH, f"predictor gave {pred.shape}, expected {(2, KH, T, D)}")
        for kind in range(2):
            seg = 2 * layer + kind
            sp, bs = pc.params[seg], slice(seg * nb, (seg + 1) * nb)
            if pc.fp8:
                exps[layer, kind] = read_exponents(exp_reader, predicted_exponents(pred[kind]))
            _, p, e = _segment_inputs(np.zeros((KH, T, D), np.uint16), pred[kind], exps[layer, kind] if pc.fp8 else None,
                                      fmt)
            lay = layout(p, _per_value_scale(sp.scale, e, KH, T, D), fmt, pc.phase)
            if sp.mix not in tables:
                f = build_tables(*sp.mix)
                tables[sp.mix] = (f, cumulative(f))
            sym = _decode_symbols(pc, bs, word_base, active, blocked(lay.tid, 1, n_seg, S), *tables[sp.mix])
            sym = unblocked(sym, 1, n_seg)
            low_len = np.where(sym == ESCAPE, 0, lay.shift)
            low = _read_fields(raw_buf, len(pc.raw), low_len, raw_base[bs], pc.n_low[bs], n_seg, S)
            k, ref_len, esc = reconstruct_lengths(sym, low.astype(np.int64), lay, fmt)
            ref = _read_fields(raw_buf, len(pc.raw), ref_len, raw_base[bs] + pc.n_low[bs], pc.n_ref[bs], n_seg, S)
            bits, valid = from_grid(np.where(esc, 1, k), ref.astype(np.int64), lay.G, fmt)
            if not bool(np.all(valid | esc)):
                raise CodecError(Status.CORRUPT, "decoded a grid position no encoder emits")
            out[layer, kind] = np.where(esc, ref, bits).reshape(KH, T, D)
        if pc.fp8:
            with np.errstate(over="ignore", invalid="ignore"):
                vals = np.ldexp(fp8_values(out[layer]), exps[layer][..., None].astype(np.int32)).astype(np.float32)
        else:
            vals = _bf16_values(out[layer])
        predictor.observe(layer, vals)
    _check_raw_padding(pc.raw, int(raw_len.sum()))
    exp_reader.finish()
    got = values_hash(out, exps) if pc.fp8 else values_hash(out)
    if got != pc.values_hash:
        return Decoded(Status.VALUE_CHECKSUM, None, "decoded values differ from the encoder's (prediction mismatch?)")
    return Decoded(Status.OK, Fp8Kv(out, exps) if pc.fp8 else out)


def _decode_symbols(pc: Parsed2, bs: slice, word_base, active, tid, freq, cum) -> np.ndarray:
    """The blocks `bs` of one segment, side by side: -> symbols, blocked [nb, S, 32]."""
    M = 1 << PROB_BITS
    n_sym = freq.shape[1]
    flat = (cum + (np.arange(cum.shape[0], dtype=np.int64) * M)[:, None]).reshape(-1)
    dec = BlockRansDecoder(pc.states[bs], pc.words, word_base[bs], pc.n_words[bs], PROB_BITS)
    sym = np.zeros(tid.shape, np.int64)
    for s in range(tid.shape[1]):
        a, t = active[:, s], tid[:, s]
        idx = np.searchsorted(flat, dec.slots() + t * M, side="right") - 1
        sy = np.where(a, idx - t * (n_sym + 1), 0)
        dec.advance(a, cum[t, sy], freq[t, sy])
        sym[:, s] = sy
    dec.finish()
    return sym


def _read_fields(buf, n_bytes, lengths, block_start, block_bits, n_seg, S) -> np.ndarray:
    """One segment's fields of `lengths` (value order), each block's from its own region."""
    if lengths.size == 0:
        return np.zeros(0, np.uint64)
    lb = blocked(lengths.astype(np.int64), 1, n_seg, S).reshape(block_start.size, -1)
    ends = np.cumsum(lb, axis=1)
    if bool(np.any(ends[:, -1] != block_bits)):
        raise CodecError(Status.CORRUPT, "a block's raw fields disagree with the block table")
    if block_start.size and int(block_start[-1] + block_bits[-1]) > 8 * n_bytes:
        raise CodecError(Status.CORRUPT, "raw bit stream ended early")
    off = unblocked(block_start[:, None] + ends - lb, 1, n_seg)
    return read_bits_at(buf, off, lengths.astype(np.int64))


def _check_raw_padding(raw: bytes, used_bits: int) -> None:
    """Only zero padding, less than a byte of it, may follow the last block's fields."""
    rest = 8 * len(raw) - used_bits
    if rest >= 8 or rest < 0:
        raise CodecError(Status.CORRUPT, "raw bit stream length disagrees with the block table")
    if rest and raw[-1] & ((1 << rest) - 1):
        raise CodecError(Status.CORRUPT, "raw bit stream padding is not zero")
