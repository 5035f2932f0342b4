"""Frames of the edge <-> backend wire format (docs/backend-wire-format.md).

frame = kind (u8) | length (u32 LE) | payload (length bytes)
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field

from ..storage.remote import Grant, StorageError

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


@dataclass(frozen=True)
class GrantedChunk:
    """A stored chunk the backend fetches itself, with what the edge recorded about it."""
    grant: Grant
    token_start: int
    token_end: int
    bytes: int
    sha256: str
    codec: str
    mac: str | None


@dataclass(frozen=True)
class StorageSpec:
    """The request header's `storage` object (docs/backend-wire-format.md): grants instead of KV frames."""
    chunks: tuple[GrantedChunk, ...]
    restore_from: int
    export_from: int
    put: tuple[tuple[Grant, str], ...]       # (create grant, form "raw" | "coded")


@dataclass(frozen=True)
class GrantedFile:
    """One of an adapter's two files in storage, with the size and SHA-256 the edge recorded at upload."""
    grant: Grant
    bytes: int
    sha256: str


@dataclass
class GenerateRequest:
    model: str
    prompt_token_ids: list[int]
    sampling: dict
    chunks: list[bytes] = field(default_factory=list)
    storage: StorageSpec | None = None
    adapter: str | None = None                 # the adapter's key (sha256 hex of its two files)
    adapter_files: tuple[bytes, bytes] | None = None   # (config, weights) when sent inline
    adapter_grants: tuple[GrantedFile, GrantedFile] | None = None   # (config, weights) to fetch from storage


def _uint(v, what: str) -> int:
    if type(v) is not int or v < 0:
        raise FrameError(f"{what} must be a non-negative integer")
    return v


def parse_storage(obj) -> StorageSpec:
    """Validates the `storage` object; raises FrameError (-> 400)."""
    if not isinstance(obj, dict):
        raise FrameError("storage must be an object")
    chunks_in, put_in = obj.get("chunks", []), obj.get("put", [])
    if not isinstance(chunks_in, list) or not isinstance(put_in, list) or len(chunks_in) > 10_000 or len(put_in) > 2:
        raise FrameError("storage.chunks must be an array, storage.put an array of at most 2")
    try:
        chunks = []
        for c in chunks_in:
            if not isinstance(c, dict):
                raise FrameError("storage.chunks[] must be objects")
            g = Grant.from_json(c.get("grant"))
            if g.mode != "read":
                raise FrameError("storage.chunks[].grant must be a read grant")
            sha, codec, mac = c.get("sha256"), c.get("codec"), c.get("mac")
            if not (isinstance(sha, str) and len(sha) == 64 and isinstance(codec, str) and len(codec) <= 32
                    and (mac is None or (isinstance(mac, str) and len(mac) == 64))):
                raise FrameError("storage.chunks[]: sha256, codec or mac malformed")
            start, end = _uint(c.get("token_start"), "token_start"), _uint(c.get("token_end"), "token_end")
            if end <= start:
                raise FrameError("storage.chunks[]: empty token range")
            chunks.append(GrantedChunk(g, start, end, _uint(c.get("bytes"), "bytes"), sha, codec, mac))
        put = []
        for p in put_in:
            if not isinstance(p, dict) or p.get("form") not in ("raw", "coded"):
                raise FrameError("storage.put[] must be {grant, form: raw | coded}")
            g = Grant.from_json(p.get("grant"))
            if g.mode != "create":
                raise FrameError("storage.put[].grant must be a create grant")
            put.append((g, p["form"]))
    except StorageError as e:
        raise FrameError(f"storage: {e}") from None
    for a, b in zip(chunks, chunks[1:]):
        if b.token_start != a.token_end:
            raise FrameError("storage.chunks must be contiguous, in token order")
    restore_from = _uint(obj.get("restore_from", 0), "storage.restore_from")
    if chunks and chunks[0].token_start != restore_from:
        raise FrameError("storage.chunks must start at restore_from")
    return StorageSpec(tuple(chunks), restore_from, _uint(obj.get("export_from", 0), "storage.export_from"), tuple(put))


def _granted_file(obj, what: str) -> GrantedFile:
    if not isinstance(obj, dict):
        raise FrameError(f"adapter.{what} must be an object {{grant, bytes, sha256}}")
    try:
        g = Grant.from_json(obj.get("grant"))
    except StorageError as e:
        raise FrameError(f"adapter.{what}.grant: {e}") from None
    if g.mode != "read":
        raise FrameError(f"adapter.{what}.grant must be a read grant")
    sha = obj.get("sha256")
    if not isinstance(sha, str) or not HEX64.fullmatch(sha):
        raise FrameError(f"adapter.{what}.sha256 must be 64 lowercase hex digits")
    return GrantedFile(g, _uint(obj.get("bytes"), f"adapter.{what}.bytes"), sha)


def parse_adapter(ad) -> tuple[str, bool, tuple[GrantedFile, GrantedFile] | None]:
    """The header's `adapter` object -> (key, inline, grants). Files come inline (two frames) or through
    read grants for both (`config`, `weights`), never both ways; neither: the backend's cached copy."""
    if not isinstance(ad, dict) or not isinstance(ad.get("key"), str) or not HEX64.fullmatch(ad["key"]):
        raise FrameError("adapter must be an object with key: 64 lowercase hex digits")
    inline = ad.get("inline", False)
    if type(inline) is not bool:
        raise FrameError("adapter.inline must be a boolean")
    has_cfg, has_w = ad.get("config") is not None, ad.get("weights") is not None
    if has_cfg != has_w:
        raise FrameError("adapter.config and adapter.weights go together")
    if inline and has_cfg:
        raise FrameError("adapter files come inline or through grants, not both")
    grants = (_granted_file(ad["config"], "config"), _granted_file(ad["weights"], "weights")) if has_cfg else None
    return ad["key"], inline, grants


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
    key, files, grants = None, None, None
    rest = frames[1:]
    if h.get("adapter") is not None:
        key, inline, grants = parse_adapter(h["adapter"])
        if inline:
            tail = rest[-2:]
            if len(tail) != 2 or any(kind != KIND_ADAPTER for kind, _ in tail):
                raise FrameError("adapter.inline needs two adapter frames (config, weights) after the KV frames")
            files, rest = (tail[0][1], tail[1][1]), rest[:-2]
    kv = rest
    if len(kv) != n or any(kind != KIND_KV for kind, _ in kv):
        raise FrameError(f"header announces {n} KV chunk frames; the body has {len(kv)} frames after it")
    storage = parse_storage(h["storage"]) if h.get("storage") is not None else None
    if storage is not None and n:
        raise FrameError("a request carries KV frames or storage grants, not both")
    return GenerateRequest(model, ids, sampling, [p for _, p in kv], storage, key, files, grants)
