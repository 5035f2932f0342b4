"""`spec-v1`: lossless coding of a KV chunk against a predictor (docs/kv-codec-format.md).

    encode_chunk(target, pred, fingerprint=..., token_start=...) -> bytes
    decode_chunk(data, predictor, fingerprint=..., layers=..., ...) -> Decoded(status, values, message)

target: BF16 bit patterns uint16 [layers, 2, kv_heads, tokens, head_dim] (K after RoPE, then V: the
raw-bf16 container layout), or in FP8-cache mode an `Fp8Kv` (e4m3 codes + power-of-two scales).
pred: float32 of the same shape in value units. The decoder gets predictions one layer at a time from
`predictor.predict(layer)` and hands back the decoded layer with `predictor.observe(layer, values)`,
so a predictor may use the exact KV of earlier layers (the speculator does).

Decoding treats the bytes as hostile: every failure is a Status, never an exception or garbage.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .fp8cache import Fp8Kv, encode_exponents, fp8_values, predicted_exponents, read_exponents
from .format import (DEFAULT_LANES, ESCAPE, MIN_SYMBOLS_PER_LANE, PROB_BITS, SCALE_STEPS, SPEC_MAGIC, SPEC_VERSION,
                     Status)
from .grid import BF16, E4M3, from_grid, sanitize_prediction
from .model import MODELS, SegmentParams, Symbols, choose_params, code_bits, layout, reconstruct_lengths, symbolize
from .rans import BitReader, CodecError, RansDecoder, pack_bits, rans_encode
from .tables import build_tables, cumulative

MODES = {"bf16": 0, "fp8": 1}
# magic, version, mode, model, fingerprint sha256, layers, kv_heads, head_dim, token_start, token_end,
# lanes, prob_bits, 3 reserved, values sha256
HEAD = struct.Struct("<4sHBB32sHHHIIIB3x32s")
SIZES = struct.Struct("<III")     # rANS words, raw bytes, FP8 exponent bytes
TRAILER = 32                      # SHA-256 of every byte before it
LIMITS = dict(layers=1024, kv_heads=1024, head_dim=4096, tokens=1 << 24, lanes=1 << 20)


class Predictor(Protocol):
    def predict(self, layer: int) -> np.ndarray: ...            # float32 [2, kv_heads, tokens, head_dim]
    def observe(self, layer: int, values: np.ndarray) -> None: ...  # decoded values, float32, same shape


class FixedPredictions:
    """A predictor whose predictions are known up front (tests, benchmarks, the encoder's own check)."""

    def __init__(self, pred: np.ndarray):
        self.pred = pred

    def predict(self, layer: int) -> np.ndarray:
        return self.pred[layer]

    def observe(self, layer: int, values: np.ndarray) -> None:
        pass


@dataclass
class Decoded:
    status: Status
    values: np.ndarray | Fp8Kv | None = None   # uint16 bits [L, 2, KH, T, D], or Fp8Kv in FP8 mode
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == Status.OK


def fingerprint_digest(fingerprint: str) -> bytes:
    return hashlib.sha256(fingerprint.encode()).digest()


def values_sha256(target: np.ndarray | Fp8Kv) -> bytes:
    """SHA-256 of the raw-bf16 container payload (BF16), or of the FP8 codes then the int8 exponents."""
    if isinstance(target, Fp8Kv):
        return hashlib.sha256(np.ascontiguousarray(target.codes).tobytes()
                              + np.ascontiguousarray(target.exps).astype(np.int8).tobytes()).digest()
    return hashlib.sha256(np.ascontiguousarray(target).astype("<u2").tobytes()).digest()


def _lanes(n_values: int, lanes: int | None) -> int:
    if lanes is not None:
        return max(1, int(lanes))
    return int(min(DEFAULT_LANES, max(1, n_values // MIN_SYMBOLS_PER_LANE)))


def _segment_inputs(x_bits, pred, exps, fmt):
    """One segment [KH, T, D] -> flat arrays (x bits, sanitized p in target units, exponent per value)."""
    KH, T, D = x_bits.shape
    e = np.zeros((KH, T, D), np.int64) if exps is None else np.broadcast_to(exps.astype(np.int64)[..., None], (KH, T, D))
    with np.errstate(over="ignore", invalid="ignore"):
        p = np.ldexp(np.asarray(pred, np.float32), (-e).astype(np.int32)).astype(np.float32)
    return x_bits.reshape(-1), sanitize_prediction(p.reshape(-1), fmt), e.reshape(-1)


def _per_value_scale(S: np.ndarray, e: np.ndarray, KH: int, T: int, D: int) -> np.ndarray:
    Sg = S.astype(np.int64).reshape(KH, 1, D)
    return (np.broadcast_to(Sg, (KH, T, D)).reshape(-1) - SCALE_STEPS * e)


def segment_spans(n_seg: int, n_segments: int, lanes: int) -> list[tuple[int, int]]:
    """rANS steps: each segment starts a new step (the decoder needs a layer's prediction to start it)."""
    return [(s * n_seg + a, s * n_seg + min(a + lanes, n_seg)) for s in range(n_segments) for a in range(0, n_seg, lanes)]


def encode_chunk(target: np.ndarray | Fp8Kv, pred: np.ndarray, *, fingerprint: str, token_start: int,
                 model: str = "improved", lanes: int | None = None, stats: dict | None = None) -> bytes:
    """Code `target` against `pred` (float32 [L, 2, KH, T, D]); returns the spec-v1 bytes.

    stats: if given, filled with "segment_bits" [L][2]: each segment's exact entropy-coded size in bits
    (symbols + raw fields + its parameters; the rANS final states and the header are not included).
    """
    cs = code_segments(target, pred, model, stats)
    L, _, KH, T, D = cs.shape
    lane_count = _lanes(L * 2 * KH * T * D, lanes)
    n_seg, fp8, params, raw_fields = KH * T * D, cs.fp8, cs.params, cs.symbols
    start, freq = cs.start, cs.freq
    states, words = rans_encode(start, freq, lane_count, PROB_BITS, spans=segment_spans(n_seg, 2 * L, lane_count))
    raw = _pack_raw(raw_fields)
    exp_bytes = encode_exponents(target.exps, pred) if fp8 else b""
    head = HEAD.pack(SPEC_MAGIC, SPEC_VERSION, MODES["fp8" if fp8 else "bf16"], MODELS[model],
                     fingerprint_digest(fingerprint), L, KH, D, token_start, token_start + T, lane_count,
                     PROB_BITS, values_sha256(target))
    body = [head, params_bytes(params)]
    body.append(SIZES.pack(words.size, len(raw), len(exp_bytes)))
    body += [states.astype("<u4").tobytes(), words.astype("<u2").tobytes(), raw, exp_bytes]
    blob = b"".join(body)
    return blob + hashlib.sha256(blob).digest()


@dataclass
class CodedSegments:
    """Everything the encoder derives per value before the streams, segments in (layer, K/V) order."""
    fp8: bool
    shape: tuple[int, int, int, int, int]
    params: list[SegmentParams]
    start: np.ndarray        # int64 [n]: rANS interval of each value's symbol
    freq: np.ndarray
    symbols: list[Symbols]   # per segment: symbols and raw fields


def code_segments(target: np.ndarray | Fp8Kv, pred: np.ndarray, model: str = "improved",
                  stats: dict | None = None) -> CodedSegments:
    """Per segment: fit the parameters, lay the values out on the prediction's grid, symbolize."""
    fp8 = isinstance(target, Fp8Kv)
    fmt = E4M3 if fp8 else BF16
    codes = target.codes if fp8 else np.asarray(target, np.uint16)
    L, two, KH, T, D = codes.shape
    if two != 2 or pred.shape != codes.shape or model not in MODELS:
        raise ValueError(f"bad shapes {codes.shape} / {pred.shape} or model {model!r}")
    pred = np.asarray(pred, np.float32)
    phase = model != "baseline"
    params: list[SegmentParams] = []
    starts, freqs, raw_fields = [], [], []
    for layer in range(L):
        for kind in range(2):
            e_rows = target.exps[layer, kind] if fp8 else None
            xb, p, e = _segment_inputs(codes[layer, kind], pred[layer, kind], e_rows, fmt)
            xv = fp8_values(xb) if fp8 else _bf16_values(xb)
            sp = choose_params(*(_by_channel(a, KH, T, D) for a in (xb, xv, p, e)), fmt, model, KH * D)
            params.append(sp)
            lay = layout(p, _per_value_scale(sp.scale, e, KH, T, D), fmt, phase)
            sy = symbolize(xb, lay, fmt)
            freq = build_tables(*sp.mix)
            starts.append(cumulative(freq)[lay.tid, sy.sym])
            freqs.append(freq[lay.tid, sy.sym])
            raw_fields.append(sy)
            if stats is not None:
                seg = float(code_bits(freq, lay, sy).sum()) + 8 * (4 + KH * D)
                stats.setdefault("segment_bits", [[0.0, 0.0] for _ in range(L)])[layer][kind] = seg
    start = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    freq = np.concatenate(freqs) if freqs else np.zeros(0, np.int64)
    return CodedSegments(fp8, (L, two, KH, T, D), params, start, freq, raw_fields)


def params_bytes(params: list[SegmentParams]) -> bytes:
    """Per segment: mixture bytes a_w, k_w (i8), a_f, a_e, then the KH*D i8 scales."""
    return b"".join(bytes([sp.mix[0], sp.mix[1] & 0xFF, sp.mix[2], sp.mix[3]]) + sp.scale.astype(np.int8).tobytes()
                    for sp in params)


def parse_params(data: bytes, off: int, n_segments: int, groups: int) -> list[SegmentParams]:
    """Inverse of params_bytes; raises CodecError for mixture weights over 1."""
    params = []
    for _ in range(n_segments):
        a_w, k_w, a_f, a_e = data[off], int(np.int8(data[off + 1])), data[off + 2], data[off + 3]
        if a_w + a_f > 256:
            raise CodecError(Status.CORRUPT, "mixture weights exceed 1")
        params.append(SegmentParams((a_w, k_w, a_f, a_e), np.frombuffer(data, np.int8, groups, off + 4).copy()))
        off += 4 + groups
    return params


def _by_channel(a: np.ndarray, KH: int, T: int, D: int) -> np.ndarray:
    """Flat [KH, T, D] -> [KH * D, T] (one row per channel) for per-channel fits."""
    return a.reshape(KH, T, D).transpose(0, 2, 1).reshape(KH * D, T)


def _bf16_values(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def _pack_raw(segments: list[Symbols]) -> bytes:
    """Per segment: every wide bucket's low bits (value order), then every refinement/escape field."""
    if not segments:
        return b""
    vals = np.concatenate([a for s in segments for a in (s.low, s.ref)])
    lens = np.concatenate([a for s in segments for a in (s.low_len, s.ref_len)])
    return pack_bits(vals.astype(np.uint64), lens)


def decode_chunk(data: bytes, predictor: Predictor, *, fingerprint: str, layers: int, kv_heads: int,
                 head_dim: int, token_start: int, token_end: int, payload_verified: bool = False) -> Decoded:
    """Decode a spec-v1 chunk whose shape and range the caller expects; any problem -> a Status.
    payload_verified: the caller has checked these exact bytes already (the container's SHA-256 covers
    them, trailer included), so the trailer is not hashed again."""
    try:
        return _decode(bytes(data), predictor, fingerprint, layers, kv_heads, head_dim, token_start, token_end,
                       payload_verified)
    except CodecError as e:
        return Decoded(e.status, None, str(e))
    except (ValueError, IndexError, OverflowError, struct.error) as e:  # hostile bytes we did not foresee
        return Decoded(Status.CORRUPT, None, f"{type(e).__name__}: {e}")


@dataclass
class Parsed:
    """A chunk whose header, parameters and stream sizes passed every check; the streams still to decode."""
    fp8: bool
    phase: bool             # model (b): prediction centres kept to 1/8 ulp
    L: int
    KH: int
    T: int
    D: int
    lanes: int
    params: list[SegmentParams]   # 2 * L segments: layer 0 K, layer 0 V, ...
    states: np.ndarray      # u32 [lanes]
    words: np.ndarray       # u16 [n_words]
    raw: bytes              # raw bit fields
    exp_bytes: bytes        # FP8 row exponents
    values_sha256: bytes


def parse(data: bytes, *, fingerprint: str, layers: int, kv_heads: int, head_dim: int, token_start: int,
          token_end: int, payload_verified: bool = False) -> Parsed | Decoded:
    """Every check before the streams: -> Parsed, or a Decoded with the failing status. Raises CodecError
    (or a struct/value error) only for malformed parameter bytes, which decode_chunk turns into CORRUPT."""
    if len(data) < 4 or data[:4] != SPEC_MAGIC:
        return Decoded(Status.BAD_MAGIC, None, "not a spec-v1 chunk")
    if len(data) < 6:
        return Decoded(Status.TRUNCATED, None, "no version")
    if struct.unpack_from("<H", data, 4)[0] != SPEC_VERSION:
        return Decoded(Status.BAD_VERSION, None, f"spec version {struct.unpack_from('<H', data, 4)[0]}")
    if len(data) < HEAD.size + TRAILER:
        return Decoded(Status.TRUNCATED, None, "shorter than the fixed header")
    (_, _, mode, model, fp_digest, L, KH, D, t0, t1, lanes, prob_bits, vsha) = HEAD.unpack_from(data, 0)
    if mode not in MODES.values() or model not in MODELS.values() or prob_bits != PROB_BITS:
        return Decoded(Status.CORRUPT, None, "unknown mode, model or prob_bits")
    if fp_digest != fingerprint_digest(fingerprint):
        return Decoded(Status.FINGERPRINT_MISMATCH, None, "chunk was coded against another predictor")
    if (L, KH, D, t0, t1) != (layers, kv_heads, head_dim, token_start, token_end):
        return Decoded(Status.SHAPE_MISMATCH, None, f"header {(L, KH, D, t0, t1)} != expected")
    T = t1 - t0
    if not (0 < L <= LIMITS["layers"] and 0 < KH <= LIMITS["kv_heads"] and 0 < D <= LIMITS["head_dim"]
            and 0 <= T <= LIMITS["tokens"] and 0 < lanes <= LIMITS["lanes"]):
        return Decoded(Status.CORRUPT, None, "shape or lanes out of range")
    off = HEAD.size
    params_len = 2 * L * (4 + KH * D)
    if len(data) < off + params_len + SIZES.size + TRAILER:
        return Decoded(Status.TRUNCATED, None, "model parameters cut short")
    n_words, n_raw, n_exp = SIZES.unpack_from(data, off + params_len)
    total = off + params_len + SIZES.size + 4 * lanes + 2 * n_words + n_raw + n_exp + TRAILER
    if len(data) < total:
        return Decoded(Status.TRUNCATED, None, f"{len(data)} bytes, header says {total}")
    if len(data) > total:
        return Decoded(Status.CORRUPT, None, "trailing bytes after the chunk")
    if not payload_verified and hashlib.sha256(data[:-TRAILER]).digest() != data[-TRAILER:]:
        return Decoded(Status.PAYLOAD_CHECKSUM, None, "chunk bytes do not match their SHA-256")
    params = parse_params(data, off, 2 * L, KH * D)
    off += params_len + SIZES.size
    states = np.frombuffer(data, "<u4", lanes, off)
    off += 4 * lanes
    words = np.frombuffer(data, "<u2", n_words, off)
    off += 2 * n_words
    return Parsed(mode == MODES["fp8"], model != MODELS["baseline"], L, KH, T, D, lanes, params, states, words,
                  data[off:off + n_raw], data[off + n_raw:off + n_raw + n_exp], vsha)


def _decode(data, predictor, fingerprint, layers, kv_heads, head_dim, token_start, token_end,
            payload_verified) -> Decoded:
    pc = parse(data, fingerprint=fingerprint, layers=layers, kv_heads=kv_heads, head_dim=head_dim,
               token_start=token_start, token_end=token_end, payload_verified=payload_verified)
    if isinstance(pc, Decoded):
        return pc
    fp8, phase, L, KH, T, D, lanes, params = pc.fp8, pc.phase, pc.L, pc.KH, pc.T, pc.D, pc.lanes, pc.params
    fmt = E4M3 if fp8 else BF16
    states, words = pc.states, pc.words
    raw = BitReader(pc.raw)
    exp_reader = BitReader(pc.exp_bytes)
    n_seg = KH * T * D
    dec = RansDecoder(states, words, 2 * L * n_seg, lanes, PROB_BITS, spans=segment_spans(n_seg, 2 * L, lanes))
    out = np.zeros((L, 2, KH, T, D), np.uint8 if fp8 else np.uint16)
    exps = np.zeros((L, 2, KH, T), np.int8) if fp8 else None
    tables: dict = {}
    step = 0
    for layer in range(L):
        pred = np.asarray(predictor.predict(layer), np.float32)
        if pred.shape != (2, KH, T, D):
            raise CodecError(Status.SHAPE_MISMATCH, f"predictor gave {pred.shape}, expected {(2, KH, T, D)}")
        for kind in range(2):
            sp = params[2 * layer + kind]
            if fp8:
                exps[layer, kind] = read_exponents(exp_reader, predicted_exponents(pred[kind]))
            _, p, e = _segment_inputs(np.zeros((KH, T, D), np.uint16), pred[kind], exps[layer, kind] if fp8 else None, fmt)
            lay = layout(p, _per_value_scale(sp.scale, e, KH, T, D), fmt, phase)
            if sp.mix not in tables:
                f = build_tables(*sp.mix)
                tables[sp.mix] = (f, cumulative(f))
            freq, cum = tables[sp.mix]
            sym, step = _decode_symbols(dec, step, lay.tid, freq, cum)
            low = raw.read(np.where(sym == ESCAPE, 0, lay.shift)).astype(np.int64)
            k, ref_len, esc = reconstruct_lengths(sym, low, lay, fmt)
            ref = raw.read(ref_len).astype(np.int64)
            bits, valid = from_grid(np.where(esc, 1, k), ref, lay.G, fmt)
            if not bool(np.all(valid | esc)):
                raise CodecError(Status.CORRUPT, "decoded a grid position no encoder emits")
            out[layer, kind] = np.where(esc, ref, bits).reshape(KH, T, D)
        if fp8:
            with np.errstate(over="ignore", invalid="ignore"):
                vals = np.ldexp(fp8_values(out[layer]), exps[layer][..., None].astype(np.int32)).astype(np.float32)
        else:
            vals = _bf16_values(out[layer])
        predictor.observe(layer, vals)
    dec.finish()
    raw.finish()
    exp_reader.finish()
    result = Fp8Kv(out, exps) if fp8 else out
    if values_sha256(result) != pc.values_sha256:
        return Decoded(Status.VALUE_CHECKSUM, None, "decoded values differ from the encoder's (prediction mismatch?)")
    return Decoded(Status.OK, result)


def _decode_symbols(dec: RansDecoder, step: int, tid: np.ndarray, freq: np.ndarray, cum: np.ndarray):
    """Run the rANS steps of one segment (len(tid) symbols) from `step`; -> (symbols, next step)."""
    M = 1 << PROB_BITS
    S = freq.shape[1]
    flat = (cum + (np.arange(cum.shape[0], dtype=np.int64) * M)[:, None]).reshape(-1)
    n = tid.size
    sym = np.empty(n, np.int64)
    a = 0
    while a < n:
        lo, hi = dec.span(step)
        tt = tid[a:a + hi - lo]
        slot = dec.slots(step).astype(np.int64)
        idx = np.searchsorted(flat, slot + tt * M, side="right") - 1
        s = idx - tt * (S + 1)
        dec.advance(step, cum[tt, s], freq[tt, s])
        sym[a:a + hi - lo] = s
        a += hi - lo
        step += 1
    return sym, step
