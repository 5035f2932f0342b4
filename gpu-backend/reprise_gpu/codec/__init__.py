"""Speculative KV coding, `spec-v1` (docs/kv-codec-format.md): lossless BF16 / FP8-cache KV against a predictor."""

from .format import Status
from .fp8cache import Fp8Kv, quantize_fp8
from .spec import Decoded, FixedPredictions, Predictor, decode_chunk, encode_chunk

__all__ = ["Decoded", "FixedPredictions", "Fp8Kv", "Predictor", "Status", "decode_chunk", "encode_chunk",
           "quantize_fp8"]
