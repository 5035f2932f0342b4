"""The grant path of /v1/generate (docs/storage-grants.md): the backend fetches a session's chunks
from storage and uploads the new one itself, so no chunk byte passes through the edge.

Fetches run on the event loop, a few at a time, while `KvRestore.verify_stream` consumes them in
token order on an executor thread: the speculator and decoder of chunk i overlap the download of
chunk i+1. Before a chunk reaches the engine it must have the size and SHA-256 the edge recorded and,
when the edge recorded one, carry that MAC, valid under the edge/backend key for its object key. The
first chunk that fails ends the prefix; its tokens and all later ones are recomputed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

import aiohttp

from ..engine import kv_io
from ..storage.chunk_mac import chunk_mac, verify_mac
from ..storage.remote import StorageError, fetch_object, put_object
from .frames import GrantedChunk, StorageSpec

log = logging.getLogger(__name__)

FETCH_CONCURRENCY = 4          # chunks in flight: enough to keep a link busy, bounded memory ahead of the decoder

_FETCH_REASONS = {"not_found": "missing", "size_mismatch": "corrupt", "checksum": "corrupt", "too_large": "corrupt"}


@dataclass
class FetchStats:
    bytes: int = 0
    seconds: float = 0.0                 # first request to last byte
    first_byte_s: float | None = None
    refused: list[dict] = field(default_factory=list)     # [{token_start, reason}]


def _header(data: bytes) -> dict | None:
    """The container's JSON header, or None when the prefix is not one (the engine says why later)."""
    try:
        magic, _, hlen = kv_io.PREFIX.unpack_from(data)
        h = json.loads(data[kv_io.PREFIX.size:kv_io.PREFIX.size + hlen]) if magic == kv_io.MAGIC else None
        return h if isinstance(h, dict) else None
    except Exception:       # struct.error, UnicodeDecodeError, JSONDecodeError, RecursionError: hostile bytes
        return None


def check_mac(data: bytes, c: GrantedChunk, k_mac: bytes | None) -> bool:
    """A chunk the edge recorded a MAC for must carry exactly that MAC, valid for its object key."""
    if c.mac is None:
        return True          # written through the edge (inline path): the edge hashed the bytes itself
    h = _header(data)
    return k_mac is not None and h is not None and h.get("mac") == c.mac and verify_mac(k_mac, c.grant.key, h)


async def _result(task: asyncio.Task):
    return await task


class ChunkFeed:
    """Iterates the spec's chunks in token order from an executor thread, fetching ahead on `loop`.
    Stops at the first chunk that is missing, does not match its record or fails its MAC."""

    def __init__(self, http: aiohttp.ClientSession, spec: StorageSpec, k_mac: bytes | None,
                 loop: asyncio.AbstractEventLoop):
        self.http, self.spec, self.k_mac, self.loop = http, spec, k_mac, loop
        self.stats = FetchStats()
        self._sem = asyncio.Semaphore(FETCH_CONCURRENCY)
        self._t0 = time.perf_counter()
        self._tasks = [loop.create_task(self._fetch(c)) for c in spec.chunks]
        self.delivered = 0

    async def _fetch(self, c: GrantedChunk) -> bytes:
        async with self._sem:
            got = await fetch_object(self.http, c.grant, expect_bytes=c.bytes, expect_sha256=c.sha256)
        s = self.stats
        s.bytes += len(got.data)
        s.seconds = time.perf_counter() - self._t0
        first = s.seconds - got.seconds + got.first_byte_s
        s.first_byte_s = first if s.first_byte_s is None else min(s.first_byte_s, first)
        return got.data

    def _refuse(self, c: GrantedChunk, reason: str, why: str) -> None:
        log.info("KV chunk at token %d not used (%s: %s); its tokens are recomputed", c.token_start, reason, why)
        self.stats.refused.append({"token_start": c.token_start, "reason": reason})

    def __iter__(self):
        try:
            for c, task in zip(self.spec.chunks, self._tasks):
                try:
                    data = asyncio.run_coroutine_threadsafe(_result(task), self.loop).result()
                except StorageError as e:
                    self._refuse(c, _FETCH_REASONS.get(e.code, "unavailable"), str(e))
                    return
                if not check_mac(data, c, self.k_mac):
                    self._refuse(c, "unauthentic", "chunk MAC missing or wrong")
                    return
                self.delivered += 1
                # fetch_object matched the body's SHA-256 with the edge's record: no second pass over it
                yield kv_io.Verified(data) if c.sha256 is not None else data
        finally:
            self.loop.call_soon_threadsafe(self.cancel)

    def cancel(self) -> None:
        for t in self._tasks:
            t.cancel()


def with_mac(container: bytes, key: str, k_mac: bytes) -> bytes:
    """The container with a `mac` for object `key` added to its header (the payload is unchanged)."""
    magic, version, hlen = kv_io.PREFIX.unpack_from(container)
    h = json.loads(container[kv_io.PREFIX.size:kv_io.PREFIX.size + hlen])
    h["mac"] = chunk_mac(k_mac, key, h)
    hb = json.dumps(h, separators=(",", ":")).encode()
    return kv_io.PREFIX.pack(magic, version, len(hb)) + hb + memoryview(container)[kv_io.PREFIX.size + hlen:]


async def store_chunk(http: aiohttp.ClientSession, grant, container: bytes, k_mac: bytes) -> dict:
    """Uploads one exported chunk through its create grant; the `kv_stored` event to send the edge.
    Raises StorageError when storage refuses (the edge then records nothing for this form)."""
    data = await asyncio.get_running_loop().run_in_executor(None, with_mac, container, grant.key, k_mac)
    h = _header(data)
    stored = await put_object(http, grant, data)
    return {"type": "kv_stored", "key": grant.key, "codec": h["codec"], "bytes": stored.size, "sha256": stored.sha256,
            "mac": h["mac"], "token_start": h["token_start"], "token_end": h["token_end"], "producer": h["producer"],
            "put_s": round(stored.seconds, 6)}


@dataclass
class GrantedTurn:
    """One request on the grant path: its restored prefix, what fetching measured, where its chunk goes."""
    st: object                       # app.ServerState (http, k_mac, counters)
    engine: object                   # LLMEngine
    restored: object                 # kv_restore.Restored
    fetched: FetchStats
    export: object                   # engine_loop.ExportSpec
    put: dict                        # form -> create Grant
    ttft: float | None = None        # submit to first token: queueing + prefill of the tokens not restored

    @classmethod
    async def start(cls, st, engine, spec: StorageSpec, prompt_token_ids: list[int], adapter=None) -> GrantedTurn:
        """Fetches and verifies the granted chunks (K/V of `adapter`, a lora.pool.PackedAdapter, if any). The new chunk starts at the edge's chain end when every
        granted chunk was used, else where the first one failed; it is exported in the forms granted."""
        from .engine_loop import ExportSpec
        loop = asyncio.get_running_loop()
        usable = spec
        feed = ChunkFeed(st.http, usable, st.k_mac, loop)
        try:
            restored = await loop.run_in_executor(None, engine.kv.verify_stream, iter(feed), prompt_token_ids,
                                                  spec.restore_from, adapter)
        finally:
            feed.cancel()
        if restored.refused_at is not None:
            feed.stats.refused.append({"token_start": restored.refused_at[0], "reason": restored.refused_at[1]})
        for r in feed.stats.refused:
            st.refused.labels(r["reason"]).inc()
        st.storage_bytes.labels("get").inc(feed.stats.bytes)
        granted_end = usable.chunks[-1].token_end if usable.chunks else 0
        complete = not feed.stats.refused and restored.tokens >= min(granted_end, max(len(prompt_token_ids) - 1, 0))
        start = spec.export_from if complete else max(restored.tokens, spec.restore_from)
        export = ExportSpec(enabled=bool(spec.put), start=start, forms=tuple(form for _, form in spec.put))
        return cls(st, engine, restored, feed.stats, export, {form: g for g, form in spec.put})

    async def store(self, form: str, container: bytes) -> dict:
        """Uploads an exported chunk; the `kv_stored` (or `kv_store_failed`) event for the edge."""
        grant = self.put[form]
        try:
            ev = await store_chunk(self.st.http, grant, container, self.st.k_mac)
        except StorageError as e:
            log.warning("storing the %s chunk failed (%s); the next turn recomputes it", form, e)
            return {"type": "kv_store_failed", "key": grant.key, "reason": e.code}
        self.st.storage_bytes.labels("put").inc(ev["bytes"])
        return ev

    def stats(self, usage: dict) -> dict:
        """What the edge's resume policy learns from this turn (its `stats` event)."""
        a, cfg, r, f = self.engine.config.model_args, self.engine.config, self.restored, self.fetched
        computed = max(0, usage.get("prompt_tokens", 0) - usage.get("cached_tokens", 0))
        return {
            "restore": {"tokens": r.tokens, "chunks": len(r.chunks), "fetch_bytes": f.bytes, "fetch_s": round(f.seconds, 6),
                        "first_byte_s": round(f.first_byte_s or 0.0, 6), "decode_s": round(r.decode_s, 6),
                        "decoded_bytes": r.decoded_bytes, "verify_s": round(r.verify_s, 6),
                        "verify_bytes": r.verify_bytes, "refused": f.refused},
            "prefill": {"tokens": computed, "s": round(self.ttft or 0.0, 6)},
            "codecs": [kv_io.CODECS[cfg.torch_dtype]] + (["spec-v1"] if self.engine.kv.coder is not None else []),
            "split": True,
            "kv_bytes_per_token": a.n_layers * 2 * a.n_kv_heads * a.head_dim * cfg.torch_dtype.itemsize,
        }
