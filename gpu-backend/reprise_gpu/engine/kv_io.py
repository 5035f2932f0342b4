"""KV chunks in and out of the paged cache (container format: docs/kv-chunk-format.md).

Chunk = b"RPKV" | u16 LE version | u32 LE header length | UTF-8 JSON header | payload.
Raw codecs store, for each layer, K then V, each [kv_heads, tokens, head_dim], little-endian.
A chunk is used only after every check passes; otherwise the caller recomputes from token ids.
Who produced a chunk, coded payloads, restore and export: kv_restore.py.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

import numpy as np
import torch

MAGIC = b"RPKV"
VERSION = 1
PREFIX = struct.Struct("<4sHI")            # magic, version, header length
MAX_HEADER_BYTES = 1 << 16                 # headers are a few hundred bytes; anything bigger is garbage
CODECS = {torch.bfloat16: "raw-bf16", torch.float16: "raw-f16", torch.float32: "raw-f32"}
CODEC_DTYPES = {v: k for k, v in CODECS.items()}


@dataclass
class KvChunk:
    token_start: int
    token_end: int
    kv: torch.Tensor | None   # [layers, 2, kv_heads, tokens, head_dim], on the CPU; None until a coded chunk is decoded
    codec: str = "raw"
    payload: bytes | memoryview = b""   # a coded chunk's payload (a view of its container), kept until decoded


class ChunkError(ValueError):
    pass


@dataclass(frozen=True)
class Verified:
    """Container bytes whose whole-object SHA-256 already matched the digest the edge recorded for that
    object (storage/remote.py fetch_object hashes the body as it streams in). Every byte is then known to
    be the stored one, so the payload's own SHA-256 is implied: parsing skips that second pass (at ~1 GB/s
    on one core it cost more than the transfer: bench/results/resume-h200-2026-12-02). All other checks
    still run."""
    data: bytes | bytearray


def _slots(block_table: list[int], block_size: int, start: int, end: int) -> torch.Tensor:
    pos = torch.arange(start, end)
    return torch.tensor(block_table, dtype=torch.long)[pos // block_size] * block_size + pos % block_size


def gather_kv(kv_cache: torch.Tensor, block_table: list[int], start: int, end: int) -> torch.Tensor:
    """K/V of tokens [start, end) as [layers, 2, kv_heads, tokens, head_dim] (on the cache's device)."""
    L, two, nb, bs, kh, d = kv_cache.shape
    slots = _slots(block_table, bs, start, end).to(kv_cache.device)
    flat = kv_cache.view(L, 2, nb * bs, kh, d)
    return flat.index_select(2, slots).permute(0, 1, 3, 2, 4).contiguous()


def scatter_kv(kv_cache: torch.Tensor, block_table: list[int], start: int, kv: torch.Tensor) -> None:
    """Write kv [layers, 2, kv_heads, tokens, head_dim] into the cache slots of tokens [start, start+tokens)."""
    L, two, nb, bs, kh, d = kv_cache.shape
    slots = _slots(block_table, bs, start, start + kv.shape[3]).to(kv_cache.device)
    flat = kv_cache.view(L, 2, nb * bs, kh, d)
    flat.index_copy_(2, slots, kv.to(kv_cache.device, non_blocking=True).permute(0, 1, 3, 2, 4))


def encode_chunk(kv: torch.Tensor, token_start: int, producer: str) -> bytes:
    """Raw-codec container bytes for kv [layers, 2, kv_heads, tokens, head_dim] covering [token_start, +tokens)."""
    wire = _wire_dtype(kv.dtype)
    payload = kv.detach().cpu().contiguous().view(_int_dtype(kv.dtype)).numpy().astype(wire).tobytes()
    return encode_container(producer, CODECS[kv.dtype], tuple(kv.shape), token_start, payload)


def encode_container(producer: str, codec: str, shape: tuple[int, ...], token_start: int, payload: bytes) -> bytes:
    """Container bytes around any codec's payload; shape = (layers, 2, kv_heads, tokens, head_dim)."""
    L, two, kh, n, d = shape
    header = {
        "producer": producer, "codec": codec, "layers": L, "kv_heads": kh, "head_dim": d,
        "token_start": token_start, "token_end": token_start + n,
        "payload_bytes": len(payload), "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    hb = json.dumps(header, separators=(",", ":")).encode()
    return PREFIX.pack(MAGIC, VERSION, len(hb)) + hb + payload


def _int_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.int16 if dtype.itemsize == 2 else torch.int32


def _wire_dtype(dtype: torch.dtype) -> str:
    return "<i2" if dtype.itemsize == 2 else "<i4"     # little-endian whatever the host


def decode_chunk(data: bytes | Verified, *, producer: str, layers: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, coded: tuple[str, ...] = ()) -> KvChunk:
    """Parse and verify one chunk; raises ChunkError on any mismatch before touching the payload's values.

    Raw codecs are decoded here. A codec named in `coded` (e.g. "spec-v1") is only checked and parsed:
    the chunk comes back with kv=None and its payload (a view, not a copy), for a decoder that needs more
    context. `data` wrapped in Verified: the payload SHA-256 is not recomputed (see Verified).
    """
    checked = isinstance(data, Verified)
    data = data.data if checked else data
    h, payload = parse_container(data, producer=producer, layers=layers, kv_heads=kv_heads, head_dim=head_dim,
                                 payload_checked=checked)
    n = h["token_end"] - h["token_start"]
    if h["codec"] in coded:
        return KvChunk(h["token_start"], h["token_end"], None, codec=h["codec"], payload=payload)
    if h["codec"] != CODECS.get(dtype):
        raise ChunkError(f"codec {h['codec']!r} does not match the cache dtype")
    if len(payload) != layers * 2 * kv_heads * n * head_dim * dtype.itemsize:
        raise ChunkError("payload length does not match the header")
    wire = _wire_dtype(dtype)
    kv = torch.from_numpy(np.frombuffer(payload, dtype=wire).astype(wire[1:], copy=True)).view(dtype)
    return KvChunk(h["token_start"], h["token_end"], kv.view(layers, 2, kv_heads, n, head_dim))


def parse_container(data: bytes, *, producer: str, layers: int, kv_heads: int, head_dim: int,
                    payload_checked: bool = False) -> tuple[dict, memoryview]:
    """-> (header, payload) after the checks every codec shares: prefix, header fields, producer, shape,
    token range, payload length and SHA-256 (not recomputed when `payload_checked`: the caller matched the
    whole object's digest against its record). Raises ChunkError."""
    if len(data) < PREFIX.size:
        raise ChunkError("shorter than the fixed prefix")
    magic, version, hlen = PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ChunkError("bad magic")
    if version != VERSION:
        raise ChunkError(f"container version {version}, expected {VERSION}")
    if hlen > MAX_HEADER_BYTES or PREFIX.size + hlen > len(data):
        raise ChunkError("header length out of range")
    try:
        h = json.loads(data[PREFIX.size:PREFIX.size + hlen].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ChunkError(f"header is not JSON: {e}") from None
    if not isinstance(h, dict):
        raise ChunkError("header is not an object")
    ints = ("layers", "kv_heads", "head_dim", "token_start", "token_end", "payload_bytes")
    if any(type(h.get(k)) is not int for k in ints) or not all(isinstance(h.get(k), str) for k in
                                                                ("producer", "codec", "payload_sha256")):
        raise ChunkError("header field missing or of the wrong type")
    if h["producer"] != producer:
        raise ChunkError("produced by another model/backend")
    if (h["layers"], h["kv_heads"], h["head_dim"]) != (layers, kv_heads, head_dim):
        raise ChunkError("shape does not match the model")
    if h["token_start"] < 0 or h["token_end"] - h["token_start"] <= 0:
        raise ChunkError("bad token range")
    payload = memoryview(data)[PREFIX.size + hlen:]
    if h["payload_bytes"] != len(payload):
        raise ChunkError("payload length does not match the header")
    if not payload_checked and hashlib.sha256(payload).hexdigest() != h["payload_sha256"]:
        raise ChunkError("payload checksum mismatch")
    return h, payload


def restorable_prefix(chunks: list[KvChunk], limit: int) -> tuple[list[KvChunk], int]:
    """The chunks that cover [0, m) contiguously in order, m capped at `limit`; stops at the first gap."""
    used, m = [], 0
    for c in sorted(chunks, key=lambda c: c.token_start):
        if c.token_start > m or m >= limit:
            break
        if c.token_end <= m:
            continue
        used.append(c)
        m = min(c.token_end, limit)
    return used, m
