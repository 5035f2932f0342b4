"""Runs the engine in a background asyncio task: steps in a worker thread while there is work.

Requests and aborts from handlers are queued and applied between steps, in the event loop's thread,
so the engine is only ever touched by one thread at a time.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from ..engine.kv_restore import Restored
from ..engine.llm_engine import LLMEngine
from ..engine.sampling import SamplingParams
from ..engine.scheduler import QueueFull

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenEvent:
    token_id: int
    text: str                   # text this token releases


@dataclass(frozen=True)
class KvEvent:
    chunk: Future               # Future[bytes]: spec-v1 chunks may still be coding
    form: str = "default"       # "raw" | "coded" | "default" (the engine's codec)


@dataclass(frozen=True)
class ExportSpec:
    """What a request exports at its end: nothing, or these forms of tokens [start, end of turn)."""
    enabled: bool = True
    start: int | None = None            # None: where the restored prefix ends
    forms: tuple[str, ...] = ()         # () : the engine's codec


@dataclass(frozen=True)
class DoneEvent:
    finish_reason: str
    usage: dict                 # prompt_tokens, completion_tokens, cached_tokens


@dataclass(frozen=True)
class ErrorEvent:
    message: str


Event = TokenEvent | KvEvent | DoneEvent | ErrorEvent


@dataclass
class RequestHandle:
    seq_id: int
    prompt_token_ids: list[int]
    params: SamplingParams
    restored: Restored
    accepted: asyncio.Future
    events: asyncio.Queue = field(default_factory=asyncio.Queue)   # of Event
    export: ExportSpec = field(default_factory=ExportSpec)
    restore_at: int = 0          # > 0: a split restore, its loaded half attached later (attach)
    adapter: object = None       # lora.pool.PackedAdapter or None


class EngineLoop:
    TPS_WINDOW_S = 10.0

    def __init__(self, engine: LLMEngine, max_queue: int):
        self.engine = engine
        self.max_queue = max_queue
        self._ids = itertools.count(1)
        self._adds: list[RequestHandle] = []
        self._aborts: list[int] = []
        self._attaches: list[tuple[int, Restored, int | None]] = []
        self._handles: dict[int, RequestHandle] = {}
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="engine-step")
        self._task: asyncio.Task | None = None
        self._recent: deque[tuple[float, int]] = deque()       # (time, tokens) per step, for tokens/s
        self.generated_tokens = 0
        self.finished: dict[str, int] = {}

    # ---- handler side ---------------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return len(self._adds) + self.engine.scheduler.num_waiting

    @property
    def running(self) -> int:
        return self.engine.scheduler.num_running

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        while self._recent and now - self._recent[0][0] > self.TPS_WINDOW_S:
            self._recent.popleft()
        return sum(n for _, n in self._recent) / self.TPS_WINDOW_S

    def submit(self, prompt_token_ids: list[int], params: SamplingParams, restored: Restored,
               export: ExportSpec | None = None, restore_at: int = 0, adapter=None) -> RequestHandle:
        """Queue a request whose chunks `engine.kv.verify` has checked (with `adapter`, a
        lora.pool.PackedAdapter, if any); `await handle.accepted` raises ValueError/QueueFull if the
        engine refuses it."""
        if self.queue_depth >= self.max_queue:
            raise QueueFull(f"{self.queue_depth} requests waiting")
        h = RequestHandle(next(self._ids), prompt_token_ids, params, restored,
                          asyncio.get_running_loop().create_future(), export=export or ExportSpec(),
                          restore_at=restore_at, adapter=adapter)
        self._adds.append(h)
        self._wake.set()
        return h

    def abort(self, seq_id: int) -> None:
        self._aborts.append(seq_id)
        self._wake.set()

    def attach(self, seq_id: int, restored: Restored, export_start: int | None) -> None:
        """The loaded half of a split restore (and where its new chunk starts), applied between steps."""
        self._attaches.append((seq_id, restored, export_start))
        self._wake.set()

    # ---- loop side ------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="engine-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    def _apply(self) -> None:
        adds, self._adds = self._adds, []
        for h in adds:
            try:
                seq = self.engine.add_request(h.prompt_token_ids, h.params, kv_chunks=h.restored,
                                              export_kv=h.export.enabled, seq_id=h.seq_id, adapter=h.adapter)
                seq.export_from, seq.export_forms = h.export.start, h.export.forms
                seq.restore_at, seq.restore_pending = h.restore_at, h.restore_at > 0
            except (ValueError, QueueFull) as e:
                if not h.accepted.done():
                    h.accepted.set_exception(e)
                continue
            self._handles[h.seq_id] = h
            if not h.accepted.done():
                h.accepted.set_result(h.seq_id)
        attaches, self._attaches = self._attaches, []
        for seq_id, restored, export_start in attaches:
            seq = self.engine.seqs.get(seq_id)
            if seq is not None:
                seq.export_from = export_start
                self.engine.attach_restored(seq_id, restored)
        aborts, self._aborts = self._aborts, []
        for seq_id in aborts:
            if self.engine.abort(seq_id):
                self.finished["abort"] = self.finished.get("abort", 0) + 1
            self._handles.pop(seq_id, None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._apply()
            if not self.engine.has_work():
                self._wake.clear()
                if not (self._adds or self._aborts or self._attaches):
                    await self._wake.wait()
                continue
            try:
                outputs = await loop.run_in_executor(self._executor, self.engine.step)
            except Exception:
                log.exception("engine step failed; failing every request in flight")
                for seq_id, h in list(self._handles.items()):
                    self.engine.abort(seq_id)
                    h.events.put_nowait(ErrorEvent("internal error in the model step"))
                self._handles.clear()
                continue
            if self.engine.idle:             # work exists but none can run yet: wait for an attach, not a spin
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), 0.05)
                except asyncio.TimeoutError:
                    pass
            self._recent.append((time.monotonic(), len(outputs)))
            self.generated_tokens += len(outputs)
            for out in outputs:
                h = self._handles.get(out.seq.seq_id)
                if h is None:
                    continue
                h.events.put_nowait(TokenEvent(out.token_id, out.text))
                if out.finished:
                    seq = out.seq
                    for form, chunk in seq.kv_exports:
                        h.events.put_nowait(KvEvent(chunk, form))
                    h.events.put_nowait(DoneEvent(seq.finish_reason, {
                        "prompt_tokens": seq.num_prompt_tokens, "completion_tokens": seq.num_completion_tokens,
                        "cached_tokens": seq.num_restored - seq.restore_at}))
                    self.finished[seq.finish_reason] = self.finished.get(seq.finish_reason, 0) + 1
                    del self._handles[seq.seq_id]
