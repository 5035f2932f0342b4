"""The codec's one entry point: `encode` and `decode` pick the NumPy reference or the tensor/Triton coder
by where the data lives, so no caller switches (dietgpu's one GpuANSCodec.h).

    encode(target, pred, fingerprint=..., token_start=...) -> bytes
    decode(data, predictor, fingerprint=..., layers=..., kv_heads=..., head_dim=..., token_start=...,
           token_end=..., device="cpu") -> Decoded(status, values, message)

target: BF16 bit patterns uint16 [L, 2, KH, T, D] or an Fp8Kv; pred: float32 of the same shape.
decode: `predictor.predict(layer)` / `observe(layer, values)` one layer at a time (NumPy arrays on the
CPU, float32 tensors on `device` otherwise). Values come back as a uint16 NumPy array (BF16) or an Fp8Kv.
Every failure is a Status (format.Status), never an exception: the caller recomputes.
"""

from __future__ import annotations

import torch

from .spec import Decoded, decode_chunk, encode_chunk


def encode(target, pred, *, fingerprint: str, token_start: int, model: str = "improved",
           lanes: int | None = None, stats: dict | None = None) -> bytes:
    """spec-v1 bytes of `target` coded against `pred` (NumPy reference encoder)."""
    return encode_chunk(target, pred, fingerprint=fingerprint, token_start=token_start, model=model, lanes=lanes,
                        stats=stats)


def decode(data: bytes, predictor, *, fingerprint: str, layers: int, kv_heads: int, head_dim: int,
           token_start: int, token_end: int, device: torch.device | str = "cpu",
           payload_verified: bool = False) -> Decoded:
    """Decode one chunk; on a CUDA device with the tensor/Triton decoder (predictions stay on the GPU)."""
    shape = dict(fingerprint=fingerprint, layers=layers, kv_heads=kv_heads, head_dim=head_dim,
                 token_start=token_start, token_end=token_end, payload_verified=payload_verified)
    if torch.device(device).type == "cuda":
        from .decode_torch import decode_chunk_torch
        return decode_chunk_torch(data, predictor, device=device, **shape)
    return decode_chunk(data, predictor, **shape)


def warm_up(device: torch.device | str) -> None:
    """Compile the GPU kernels now, so the first chunk a server decodes does not wait for Triton."""
    if torch.device(device).type == "cuda":
        from .rans_kernel import warm_up as rans_warm_up
        rans_warm_up(torch.device(device))
