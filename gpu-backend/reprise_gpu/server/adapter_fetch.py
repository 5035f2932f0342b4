"""The LoRA adapter of a /v1/generate request: from the host LRU, from the two files sent inline, or fetched
from storage through the read grants the edge sent (docs/lora-adapters.md, "Edge -> backend").

A fetch is async on the event loop: the request waits for its adapter before it is submitted, while the
engine keeps stepping every other sequence. Parsing (safetensors, finiteness, packing into pages) runs
on an executor thread. Concurrent requests for the same uncached adapter share one fetch: a per-key
in-flight task, which the first request starts with its own grants.

The fetched bytes are hostile: each file is read with a byte cap (the largest valid file for this model)
and must have exactly the size and SHA-256 the edge recorded at upload; then the registry checks that
the two files hash to the adapter's key and parses them like inline files.

Failures: the bytes are wrong (size, SHA-256, key, contents) -> AdapterError, 400 `bad_adapter`; storage
did not deliver (missing object, refused or expired grant, network, timeout) -> AdapterFetchError,
502 `adapter_fetch_failed`, which the edge treats like any backend failure.
"""

from __future__ import annotations

import asyncio
import logging

from ..lora.registry import MAX_CONFIG_BYTES, AdapterError, AdapterRegistry, max_weights_bytes
from ..storage.remote import StorageError, fetch_object
from .frames import GenerateRequest, GrantedFile

log = logging.getLogger(__name__)

# Distinct adapters fetched at once. Fetched files sit in host memory until parsed (a SmolLM2 adapter is at
# most 157 MB, an 8B one 1.3 GB, held twice while fetch_object copies it out), and requests wait for their
# adapter before the queue bound applies: this bounds that memory whatever the edge sends.
MAX_CONCURRENT_FETCHES = 4

# StorageError codes that mean the bytes are not the adapter the edge recorded (not a storage outage).
_CONTENT_CODES = {"checksum", "size_mismatch", "too_large"}


class AdapterFetchError(Exception):
    """Storage did not deliver an adapter file through its grant; `code` is the StorageError's."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class AdapterLoader:
    """Resolves requests' adapters against one engine's registry; holds the in-flight fetches by key."""

    def __init__(self, registry: AdapterRegistry | None, http, fetched_bytes=None):
        self.registry, self.http = registry, http
        self.fetched_bytes = fetched_bytes        # prometheus counter child, or None
        self.inflight: dict[str, asyncio.Task] = {}
        self.fetches = 0                          # fetches started (tests: concurrent requests share one)
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_FETCHES)

    async def resolve(self, req: GenerateRequest):
        """The request's adapter (a packed adapter from the registry) or None; AdapterError if malformed or
        not the key's files, AdapterFetchError if storage failed, LookupError if neither cached nor sent."""
        if req.adapter is None:
            return None
        reg = self.registry
        if reg is None:
            raise AdapterError("this backend serves no LoRA adapters")
        cached = reg.get(req.adapter)
        if cached is not None:
            return cached
        loop = asyncio.get_running_loop()
        if req.adapter_files is not None:
            return await loop.run_in_executor(None, reg.add, *req.adapter_files, req.adapter)
        if req.adapter_grants is None:
            raise LookupError(f"adapter {req.adapter[:16]}... is not cached here; send its files")
        task = self.inflight.get(req.adapter)
        if task is None:
            task = loop.create_task(self._fetch_and_add(req.adapter, *req.adapter_grants))
            self.inflight[req.adapter] = task
            self.fetches += 1
            task.add_done_callback(lambda t, k=req.adapter: self._done(k, t))
        # shield: a client that disconnects does not cancel the fetch the others wait for
        return await asyncio.shield(task)

    def _done(self, key: str, task: asyncio.Task) -> None:
        if self.inflight.get(key) is task:
            del self.inflight[key]
        if not task.cancelled() and task.exception() is not None:     # retrieved: no "never retrieved" noise
            log.info("adapter %s... not loaded: %s", key[:16], task.exception())

    async def _fetch_and_add(self, key: str, config: GrantedFile, weights: GrantedFile):
        reg = self.registry
        limits = (MAX_CONFIG_BYTES, max_weights_bytes(reg.args))
        async with self._slots:
            try:
                async with asyncio.TaskGroup() as tg:        # both files at once; one failing cancels the other
                    jobs = [tg.create_task(self._fetch(f, name, cap))
                            for f, name, cap in ((config, "adapter_config.json", limits[0]),
                                                 (weights, "adapter_model.safetensors", limits[1]))]
            except BaseExceptionGroup as eg:
                raise eg.exceptions[0] from None
            cfg, w = (j.result() for j in jobs)
            return await asyncio.get_running_loop().run_in_executor(None, reg.add, cfg, w, key)

    async def _fetch(self, f: GrantedFile, name: str, cap: int) -> bytes:
        if f.bytes > cap:
            raise AdapterError(f"{name} is recorded as {f.bytes} bytes; the limit for this model is {cap}")
        try:
            got = await fetch_object(self.http, f.grant, max_bytes=cap, expect_bytes=f.bytes, expect_sha256=f.sha256)
        except StorageError as e:
            if e.code in _CONTENT_CODES:
                raise AdapterError(f"{name} from storage is not the uploaded file ({e})") from None
            raise AdapterFetchError(e.code, f"fetching {name} failed: {e}") from None
        if self.fetched_bytes is not None:
            self.fetched_bytes.inc(len(got.data))
        return got.data
