"""spec-v1 decoding of BF16 chunks with PyTorch tensors, on the GPU next to the speculator.

The same decoder as `spec.decode_chunk` (which stays the reference, and the only FP8-cache decoder),
step for step: header checks are shared (`spec.parse`), the per-value math of grid.py / model.py is
repeated here on int64 tensors, and each segment's rANS loop is one Triton launch (rans_kernel.py).
Every integer operation has the same meaning in both (arithmetic shifts, two's-complement masks, frexp
on values below 2^53), and tests compare the two on the committed vectors, random chunks and hostile
bytes. On a CUDA predictor the values never leave the GPU until the final SHA-256 check.

Per segment (one layer's K or V) the host waits twice, for the lengths of the two raw-bit reads.
"""

from __future__ import annotations

import hashlib
import struct
from functools import lru_cache

import numpy as np
import torch

from .format import (CLASS_MIN, CLASS_WIDE, ESCAPE, GRID_FRAC_BITS, MAX_REL_SCALE, N_NARROW, RANS_L, SCALE_STEPS,
                     WINDOW, Status)
from .grid import BF16
from .rans import BitReader, CodecError
from .rans_kernel import decode_segment, decode_segment_ref, slot_lut
from .spec import Decoded, Parsed, decode_chunk, parse
from .tables import build_tables, cumulative

MB = BF16.mant_bits


class TorchPredictor:
    """What this decoder needs from a predictor: float32 tensors [2, KH, T, D] on its device."""

    def predict(self, layer: int) -> torch.Tensor: ...
    def observe(self, layer: int, values: torch.Tensor) -> None: ...


def decode_chunk_torch(data: bytes, predictor, *, fingerprint: str, layers: int, kv_heads: int, head_dim: int,
                       token_start: int, token_end: int, device: torch.device | str,
                       rans: str = "auto", payload_verified: bool = False) -> Decoded:
    """Like spec.decode_chunk for a `TorchPredictor`; values come back as a uint16 NumPy array.
    rans: "kernel" (Triton), "reference" (plain PyTorch ops) or "auto" (the kernel on CUDA). FP8-cache
    chunks go to the NumPy decoder through an adapter."""
    dev = torch.device(device)
    try:
        pc = parse(bytes(data), fingerprint=fingerprint, layers=layers, kv_heads=kv_heads, head_dim=head_dim,
                   token_start=token_start, token_end=token_end, payload_verified=payload_verified)
        if isinstance(pc, Decoded):
            return pc
        if pc.fp8:
            return decode_chunk(data, HostPredictor(predictor), fingerprint=fingerprint, layers=layers,
                                kv_heads=kv_heads, head_dim=head_dim, token_start=token_start, token_end=token_end,
                                payload_verified=payload_verified)
        use_kernel = rans == "kernel" or (rans == "auto" and dev.type == "cuda")
        return _decode(pc, predictor, dev, decode_segment if use_kernel else decode_segment_ref)
    except CodecError as e:
        return Decoded(e.status, None, str(e))
    except (ValueError, IndexError, OverflowError, struct.error, RuntimeError) as e:
        return Decoded(Status.CORRUPT, None, f"{type(e).__name__}: {e}")


class HostPredictor:
    """A tensor predictor as the NumPy decoders read one: predictions to host arrays, exact values back
    as tensors (the fallbacks of this decoder and of the spec-v2 GPU decoder)."""

    def __init__(self, p):
        self.p = p

    def predict(self, layer):
        return self.p.predict(layer).cpu().numpy()

    def observe(self, layer, values):
        self.p.observe(layer, torch.from_numpy(np.ascontiguousarray(values)))


@lru_cache(maxsize=16)
def _tables(mix: tuple[int, int, int, int], device: torch.device):
    f = build_tables(*mix)
    freq = torch.from_numpy(f.copy()).to(device)
    cum = torch.from_numpy(cumulative(f)[:, :-1].copy()).to(device)
    return freq, cum, slot_lut(freq)


def _decode(pc: Parsed, predictor, dev: torch.device, run) -> Decoded:
    L, KH, T, D, lanes = pc.L, pc.KH, pc.T, pc.D, pc.lanes
    n_seg = KH * T * D
    if int(pc.states.min(initial=RANS_L)) < RANS_L:
        raise CodecError(Status.CORRUPT, "rANS initial state out of range")
    x = torch.from_numpy(pc.states.astype(np.int64)).to(dev)
    ptr = torch.zeros(1, dtype=torch.int64, device=dev)
    words = torch.from_numpy(pc.words.astype(np.int64)).to(dev)
    raw = TorchBitReader(pc.raw, dev)
    group = (torch.arange(KH, device=dev)[:, None, None] * D + torch.arange(D, device=dev)[None, None, :]
             ).expand(KH, T, D).reshape(-1)
    out = torch.zeros((L, 2, KH, T, D), dtype=torch.int64, device=dev)
    for layer in range(L):
        pred = predictor.predict(layer)
        if tuple(pred.shape) != (2, KH, T, D):
            raise CodecError(Status.SHAPE_MISMATCH, f"predictor gave {tuple(pred.shape)}, expected {(2, KH, T, D)}")
        pred = pred.to(dev, torch.float32)
        for kind in range(2):
            sp = pc.params[2 * layer + kind]
            S_v = torch.from_numpy(sp.scale.astype(np.int64)).to(dev)[group]
            G, c0, tid, shift = layout(sanitize(pred[kind].reshape(-1)), S_v, pc.phase)
            freq, cum, lut = _tables(sp.mix, dev)
            sym = run(x, ptr, words, tid, lut, freq, cum, lanes).long() if n_seg else tid
            esc = sym == ESCAPE
            low = raw.read(torch.where(esc, 0, shift))
            k = c0 + (sym - WINDOW) * (torch.ones_like(shift) << shift) + low
            ref_len = torch.where(esc, BF16.raw_bits, refinement_len(k, G))
            ref = raw.read(ref_len)
            bits, valid = from_grid(torch.where(esc, 1, k), ref, G)
            if not bool(torch.all(valid | esc)):
                raise CodecError(Status.CORRUPT, "decoded a grid position no encoder emits")
            out[layer, kind] = torch.where(esc, ref, bits).view(KH, T, D)
        vals = (out[layer].to(torch.int32) << 16).view(torch.float32)
        predictor.observe(layer, vals)
    if int(ptr) != words.numel() or bool(torch.any(x != RANS_L)):
        raise CodecError(Status.CORRUPT, "rANS stream did not end in the initial state")
    raw.finish()
    values = out.to(torch.int32).cpu().numpy().astype(np.uint16)
    if hashlib.sha256(values.astype("<u2").tobytes()).digest() != pc.values_sha256:
        return Decoded(Status.VALUE_CHECKSUM, None, "decoded values differ from the encoder's (prediction mismatch?)")
    return Decoded(Status.OK, values)


# ---- grid.py / model.py on tensors (BF16 only) ------------------------------------------------------

def sanitize(p: torch.Tensor) -> torch.Tensor:
    m = BF16.max_finite
    p = torch.where(torch.isfinite(p), p, torch.zeros_like(p)).clamp(-m, m)
    return p + 0.0                                                   # -0 -> +0


def layout(p: torch.Tensor, S_v: torch.Tensor, phase: bool):
    """model.layout: -> (G, c0, tid, shift), int64 per value."""
    b = p.view(torch.int32).long() & 0xFFFFFFFF
    e32 = (b >> 23) & 0xFF
    G0 = (torch.clamp(e32, min=1) - 127 + BF16.bias).clamp(1, BF16.exp_max)
    floor = BF16.B + ((S_v - MAX_REL_SCALE + SCALE_STEPS - 1) >> 2)
    G = torch.maximum(G0, floor).clamp(1, BF16.exp_max)
    mant = (b & 0x7FFFFF) | torch.where(e32 > 0, 1 << 23, 0)
    sh = 150 - BF16.B + G - GRID_FRAC_BITS - torch.clamp(e32, min=1)
    mag = mant >> sh.clamp(0, 63)
    P = torch.where((b >> 31) != 0, -mag, mag)
    C = (S_v - SCALE_STEPS * (G - BF16.B)).clamp(CLASS_MIN, MAX_REL_SCALE + SCALE_STEPS - 1)
    wide = C >= CLASS_WIDE
    nph = 1 << GRID_FRAC_BITS
    if phase:
        c0 = torch.where(wide, (P + nph // 2) >> GRID_FRAC_BITS, P >> GRID_FRAC_BITS)
        ph = torch.where(wide, 0, P & (nph - 1))
    else:
        c0 = (P + nph // 2) >> GRID_FRAC_BITS
        ph = torch.zeros_like(P)
    tid = torch.where(wide, N_NARROW * nph + ((C - CLASS_WIDE) & 3),
                      (torch.clamp(C, max=CLASS_WIDE - 1) - CLASS_MIN) * nph + ph)
    shift = torch.where(wide, ((C - CLASS_WIDE) >> 2) + 1, 0)
    return G, c0, tid, shift


def bitlen(K: torch.Tensor) -> torch.Tensor:
    return torch.frexp(K.double())[1].long()


def refinement_len(k: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    K = k.abs()
    small = (K > 0) & (K < (1 << MB))
    return torch.where(small, torch.minimum(MB + 1 - bitlen(K), G - 1), 0)


def from_grid(k: torch.Tensor, ref: torch.Tensor, G: torch.Tensor):
    """grid.from_grid for BF16: -> (bits int64, valid bool)."""
    K = k.abs()
    big = K >= (1 << MB)
    s = torch.clamp(bitlen(K) - MB - 1, min=0)
    j = refinement_len(k, G)
    Ep = torch.where(big, G + s, G - j)
    m = torch.where(big, K >> s, (K << j) | ref)
    valid = (K > 0) & (Ep <= BF16.exp_max) & (Ep >= 1)
    valid &= ~big | ((K & ((torch.ones_like(s) << s) - 1)) == 0)
    sub = (Ep == 1) & (m < (1 << MB))
    Efield = torch.where(sub, 0, Ep)
    bits = (Efield << MB) | (m & ((1 << MB) - 1))
    bits = bits | torch.where(k < 0, 1 << (BF16.raw_bits - 1), 0)
    return torch.where(valid, bits, 0), valid


class TorchBitReader:
    """rans.BitReader on a device tensor: fields MSB first, in order, each 0..32 bits."""

    def __init__(self, data: bytes, device: torch.device):
        self.data, self.nbits_total = bytes(data), len(data) * 8
        self.buf = torch.from_numpy(np.frombuffer(bytes(data) + b"\0" * 8, dtype=np.uint8).astype(np.int64)).to(device)
        self.pos = 0

    def read(self, nbits: torch.Tensor) -> torch.Tensor:
        ends = torch.cumsum(nbits, 0)
        total = int(ends[-1]) if nbits.numel() else 0
        if self.pos + total > self.nbits_total:
            raise CodecError(Status.CORRUPT, "raw bit stream ended early")
        off = self.pos + ends - nbits
        self.pos += total
        byte = off >> 3
        win = torch.zeros_like(off)
        for i in range(5):                                            # a 40-bit window holds any 32-bit field
            win = (win << 8) | self.buf[byte + i]
        return (win >> (40 - (off & 7) - nbits)) & ((torch.ones_like(nbits) << nbits) - 1)

    def finish(self) -> None:
        """Only zero padding may follow the last field: the same rule as rans.BitReader, checked by it."""
        ref = BitReader(self.data)
        ref.pos = self.pos
        ref.finish()
