"""The codec's one entry point: `encode` and `decode` pick the NumPy reference or the GPU coder by where
the data lives, and the bitstream version by the chunk's own header, so no caller switches (dietgpu's one
GpuANSCodec.h).

    encode(target, pred, fingerprint=..., token_start=..., version=2) -> bytes
    decode(data, predictor, fingerprint=..., layers=..., kv_heads=..., head_dim=..., token_start=...,
           token_end=..., device="cpu") -> Decoded(status, values, message)

encode: target BF16 bits [L, 2, KH, T, D] (uint16 NumPy, or int16 tensor) or FP8 (Fp8Kv, or a (codes,
exps) tuple of tensors); pred float32 of the same shape. Tensors on CUDA -> the GPU coder (spec-v2 only);
NumPy -> the reference coder of `version`.
decode: spec-v1 or spec-v2, read from the bytes. On CUDA, `predictor.predict(layer)` returns float32
tensors on the device and values come back as device tensors (int16 BF16 bits, or (codes, exps));
on the CPU, NumPy arrays in and out (uint16 or Fp8Kv). Every failure is a Status, never an exception.
"""

from __future__ import annotations

import struct

import numpy as np
import torch

from .format import SPEC_MAGIC, SPEC_VERSION_2
from .fp8cache import Fp8Kv
from .spec import Decoded, decode_chunk, encode_chunk
from .spec2 import decode_chunk_v2, encode_chunk_v2

VERSIONS = (1, 2)


def encode(target, pred, *, fingerprint: str, token_start: int, model: str = "improved", version: int = 2,
           lanes: int | None = None, block_steps: int | None = None, stats: dict | None = None,
           as_tensor: bool = False) -> bytes:
    """spec-v`version` bytes of `target` coded against `pred` (as_tensor: the GPU coder's uint8 tensor,
    still on the GPU, instead of bytes)."""
    if version not in VERSIONS:
        raise ValueError(f"spec version must be one of {VERSIONS}")
    if isinstance(pred, torch.Tensor) and pred.is_cuda:
        if version != 2:
            raise ValueError("the GPU coder writes spec-v2")
        from .gpu import encode_v2
        return encode_v2(target, pred, fingerprint=fingerprint, token_start=token_start, model=model,
                         block_steps=block_steps, as_tensor=as_tensor)
    pred = pred.cpu().numpy() if isinstance(pred, torch.Tensor) else pred
    if isinstance(target, tuple):
        target = Fp8Kv(target[0].cpu().numpy(), target[1].cpu().numpy())
    elif isinstance(target, torch.Tensor):
        target = target.cpu().numpy().view(np.uint16)
    if version == 1:
        return encode_chunk(target, pred, fingerprint=fingerprint, token_start=token_start, model=model, lanes=lanes,
                            stats=stats)
    return encode_chunk_v2(target, pred, fingerprint=fingerprint, token_start=token_start, model=model,
                           block_steps=block_steps, stats=stats)


def chunk_version(data: bytes) -> int | None:
    """The spec version a chunk's header names (None if it is no spec chunk at all)."""
    if len(data) < 6 or data[:4] != SPEC_MAGIC:
        return None
    return struct.unpack_from("<H", data, 4)[0]


def decode(data: bytes, predictor, *, fingerprint: str, layers: int, kv_heads: int, head_dim: int,
           token_start: int, token_end: int, device: torch.device | str = "cpu",
           payload_verified: bool = False) -> Decoded:
    """Decode one chunk: on a CUDA device with the GPU coder (predictions and values stay on the GPU)."""
    shape = dict(fingerprint=fingerprint, layers=layers, kv_heads=kv_heads, head_dim=head_dim,
                 token_start=token_start, token_end=token_end, payload_verified=payload_verified)
    v2 = chunk_version(data) == SPEC_VERSION_2
    if torch.device(device).type == "cuda":
        if v2:
            from .gpu import decode_v2
            return decode_v2(data, predictor, device=device, **shape)
        from .decode_torch import decode_chunk_torch
        return decode_chunk_torch(data, predictor, device=device, **shape)
    return (decode_chunk_v2 if v2 else decode_chunk)(data, predictor, **shape)


def warm_up(device: torch.device | str) -> None:
    """Compile the GPU kernels and build the standard tables now, so the first chunk does not wait."""
    if torch.device(device).type == "cuda":
        from .gpu import warm_up as v2_warm_up
        from .rans_kernel import warm_up as v1_warm_up
        v1_warm_up(torch.device(device))
        v2_warm_up(torch.device(device))
