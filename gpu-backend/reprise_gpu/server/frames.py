"""Frames of the edge <-> backend wire format (docs/backend-wire-format.md).

frame = kind (u8) | length (u32 LE) | payload (length bytes)
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field

WIRE_VERSION = 1
CONTENT_TYPE = "application/x-reprise-frames"
FRAME_HEAD = struct.Struct("<BI")
HEX64 = re.compile(r"[0-9a-f]{64}")
KIND_JSON = 0x01       # UTF-8 JSON object
KIND_KV = 0x02         # one KV chunk container (docs/kv-chunk-format.md)
KIND_ADAPTER = 0x03    # one LoRA adapter file: adapter_config.json, then adapter_model.safetensors


class FrameError(ValueError):
    pass


def frame(kind: int, payload: bytes) -> bytes:
    return FRAME_HEAD.pack(kind, len(payload)) + payload


def json_frame(obj: dict) -> bytes:
    return frame(KIND_JSON, json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode())


def split_frames(body: bytes) -> list[tuple[int, bytes]]:
    """All frames of a complete body; raises FrameError on a truncated frame or an unknown kind."""
    out, off, view = [], 0, memoryview(body)
    while off < len(body):
        if off + FRAME_HEAD.size > len(body):
            raise FrameError("truncated frame header")
        kind, n = FRAME_HEAD.unpack_from(body, off)
        off += FRAME_HEAD.size
        if kind not in (KIND_JSON, KIND_KV, KIND_ADAPTER):
            raise FrameError(f"unknown frame kind {kind}")
        if off + n > len(body):
            raise FrameError("truncated frame payload")
        out.append((kind, bytes(view[off:off + n])))
        off += n
    return out


@dataclass
class GenerateRequest:
    model: str
    prompt_token_ids: list[int]
    sampling: dict
    chunks: list[bytes] = field(default_factory=list)
    adapter: str | None = None                 # the adapter's key (sha256 hex of its two files)
    adapter_files: tuple[bytes, bytes] | None = None   # (config, weights) when sent inline


def parse_generate_body(body: bytes) -> GenerateRequest:
    """Body = one JSON header frame, then exactly `chunks` KV frames. Raises FrameError (-> 400)."""
    frames = split_frames(body)
    if not frames or frames[0][0] != KIND_JSON:
        raise FrameError("the first frame must be the JSON request header")
    try:
        h = json.loads(frames[0][1].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FrameError(f"request header is not JSON: {e}") from None
    if not isinstance(h, dict):
        raise FrameError("request header must be a JSON object")
    if h.get("version") != WIRE_VERSION:
        raise FrameError(f"unsupported version {h.get('version')!r}; this backend speaks {WIRE_VERSION}")
    model, ids, sampling, n = h.get("model"), h.get("prompt_token_ids"), h.get("sampling", {}), h.get("chunks", 0)
    if not isinstance(model, str):
        raise FrameError("model must be a string")
    if not isinstance(ids, list) or not ids or any(type(t) is not int for t in ids):
        raise FrameError("prompt_token_ids must be a non-empty array of integers")
    if not isinstance(sampling, dict):
        raise FrameError("sampling must be an object")
    if type(n) is not int or n < 0:
        raise FrameError("chunks must be a non-negative integer")
    ad = h.get("adapter")
    key, files = None, None
    rest = frames[1:]
    if ad is not None:
        if not isinstance(ad, dict) or not isinstance(ad.get("key"), str) or not HEX64.fullmatch(ad["key"]):
            raise FrameError("adapter must be an object with key: 64 lowercase hex digits")
        if type(ad.get("inline", False)) is not bool:
            raise FrameError("adapter.inline must be a boolean")
        key = ad["key"]
        if ad.get("inline", False):
            tail = rest[-2:]
            if len(tail) != 2 or any(kind != KIND_ADAPTER for kind, _ in tail):
                raise FrameError("adapter.inline needs two adapter frames (config, weights) after the KV frames")
            files, rest = (tail[0][1], tail[1][1]), rest[:-2]
    kv = rest
    if len(kv) != n or any(kind != KIND_KV for kind, _ in kv):
        raise FrameError(f"header announces {n} KV chunk frames; the body has {len(kv)} frames after it")
    return GenerateRequest(model, ids, sampling, [p for _, p in kv], key, files)
