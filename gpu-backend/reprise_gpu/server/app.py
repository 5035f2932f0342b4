"""The aiohttp app: POST /v1/generate, GET /healthz, /readyz, /metrics (docs/backend-wire-format.md)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..config import Config
from ..engine.llm_engine import LLMEngine
from ..engine.sampling import SamplingParams
from ..engine.scheduler import QueueFull
from ..lora.registry import AdapterError
from . import auth
from ..engine.kv_restore import Restored
from .engine_loop import DoneEvent, EngineLoop, ExportSpec, KvEvent, TokenEvent
from .frames import CONTENT_TYPE, KIND_KV, FrameError, frame, json_frame, parse_generate_body
from .adapter_fetch import AdapterFetchError, AdapterLoader
from .storage_io import GrantedTurn
from ..storage.chunk_mac import mac_key

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 512 << 20        # prompt + KV chunks: ~23 KB per token for SmolLM2, 128 KB for an 8B model
DISCONNECT_POLL_S = 1.0

@dataclass
class ServerState:
    config: Config
    loop: EngineLoop | None = None       # set once the model is loaded
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    rejected: Counter | None = None
    refused: Counter | None = None              # granted chunks not used, by reason
    storage_bytes: Counter | None = None        # bytes fetched / stored through grants
    http: aiohttp.ClientSession | None = None   # for granted URLs (storage/remote.py)
    k_mac: bytes = b""                          # chunk-MAC key (storage/chunk_mac.py)
    adapters: AdapterLoader | None = None       # set with `loop`: cached, inline or granted adapters


STATE = web.AppKey("state", ServerState)


class EngineCollector(Collector):
    """Reads the live engine at scrape time."""

    def __init__(self, state: ServerState):
        self.state = state

    def collect(self):
        loop = self.state.loop
        yield GaugeMetricFamily("reprise_model_ready", "1 once the model is loaded", value=float(loop is not None))
        if loop is None:
            return
        bm = loop.engine.block_manager
        yield GaugeMetricFamily("reprise_queue_depth", "requests waiting for admission", value=loop.queue_depth)
        yield GaugeMetricFamily("reprise_running_batch_size", "sequences in the running batch", value=loop.running)
        yield CounterMetricFamily("reprise_generated_tokens", "tokens generated", value=loop.generated_tokens)
        yield GaugeMetricFamily("reprise_generation_tokens_per_second", "tokens generated per second, last 10 s",
                                value=loop.tokens_per_second())
        yield GaugeMetricFamily("reprise_kv_blocks_in_use", "KV cache blocks held by sequences", value=bm.num_used)
        yield GaugeMetricFamily("reprise_kv_blocks_total", "KV cache blocks sequences can use", value=bm.num_usable)
        fin = CounterMetricFamily("reprise_requests_finished", "requests finished", labels=["reason"])
        for reason, n in sorted(loop.finished.items()):
            fin.add_metric([reason], n)
        yield fin


def error(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    st = request.app[STATE]
    if st.loop is None:
        return web.json_response({"status": "loading"}, status=503)
    return web.json_response({"status": "ready", "model": st.config.model})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[STATE].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def generate(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    cfg, rejected = st.config, st.rejected
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        rejected.labels("too_large").inc()
        return error(413, "too_large", f"body exceeds {MAX_BODY_BYTES} bytes")
    if cfg.secret is not None:
        why = auth.verify(cfg.secret.encode(), request.headers.get(auth.TIMESTAMP_HEADER),
                          request.headers.get(auth.SIGNATURE_HEADER), body)
        if why is not None:
            rejected.labels("unauthorized").inc()
            return error(401, "unauthorized", why)
    try:
        req = parse_generate_body(body)
        params = SamplingParams.from_dict(req.sampling)
    except (FrameError, ValueError, TypeError) as e:
        rejected.labels("bad_request").inc()
        return error(400, "bad_request", str(e))
    if req.model != cfg.model:
        rejected.labels("unknown_model").inc()
        return error(404, "unknown_model", f"this backend serves {cfg.model!r}, not {req.model!r}")
    loop = st.loop
    if loop is None:
        rejected.labels("not_ready").inc()
        return error(503, "not_ready", "model is loading", headers={"Retry-After": "5"})
    try:
        adapter = await st.adapters.resolve(req)       # may fetch through grants: others keep stepping
    except AdapterError as e:
        rejected.labels("bad_request").inc()
        return error(400, "bad_adapter", str(e))
    except AdapterFetchError as e:
        rejected.labels("adapter_fetch_failed").inc()
        return error(502, "adapter_fetch_failed", str(e))
    except LookupError as e:
        rejected.labels("bad_request").inc()
        return error(409, "adapter_needed", str(e))
    resp = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})
    granted = None
    try:
        if req.storage is None:
            restored = await asyncio.get_running_loop().run_in_executor(None, loop.engine.kv.verify, req.chunks,
                                                                         req.prompt_token_ids, adapter)
            handle = loop.submit(req.prompt_token_ids, params, restored, adapter=adapter)
            await handle.accepted
        else:
            # The grant path: the headers go out first, since fetching a long session can take a while;
            # from here on a refusal is an error frame (the edge then tries its next backend).
            if loop.queue_depth >= loop.max_queue:
                raise QueueFull(f"{loop.queue_depth} requests waiting")
            await resp.prepare(request)
            if req.storage.restore_from:
                # Split ("compute or load? both"): prefill [0, k) now, attach [k, …) when it has loaded.
                forms = tuple(form for _, form in req.storage.put)
                handle = loop.submit(req.prompt_token_ids, params, Restored(), ExportSpec(bool(forms), None, forms),
                                     restore_at=req.storage.restore_from, adapter=adapter)
                await handle.accepted
                granted = await GrantedTurn.start(st, loop.engine, req.storage, req.prompt_token_ids, adapter)
                loop.attach(handle.seq_id, granted.restored, granted.export.start)
            else:
                granted = await GrantedTurn.start(st, loop.engine, req.storage, req.prompt_token_ids, adapter)
                handle = loop.submit(req.prompt_token_ids, params, granted.restored, granted.export, adapter=adapter)
                await handle.accepted
    except (QueueFull, ValueError) as e:
        code, status = ("queue_full", 503) if isinstance(e, QueueFull) else ("bad_request", 400)
        rejected.labels(code).inc()
        if resp.prepared:
            await resp.write(json_frame({"type": "error", "error": {"code": code, "message": str(e)}}))
            return resp
        return error(status, code, str(e), headers={"Retry-After": "1"} if status == 503 else None)
    except (ConnectionResetError, ConnectionError):
        return resp

    done = False
    t_submit = time.perf_counter()
    try:
        if not resp.prepared:
            await resp.prepare(request)
        while not done:
            try:
                ev = await asyncio.wait_for(handle.events.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if request.transport is None or request.transport.is_closing():
                    break
                continue
            if isinstance(ev, TokenEvent):
                if granted is not None and granted.ttft is None:
                    granted.ttft = time.perf_counter() - t_submit
                await resp.write(json_frame({"type": "token", "id": ev.token_id, "text": ev.text}))
            elif isinstance(ev, KvEvent):
                try:        # spec-v1 chunks finish coding on their own thread; waiting here blocks no one
                    chunk = await asyncio.wrap_future(ev.chunk)
                except Exception:
                    log.exception("KV chunk export failed; the turn is sent without it (next turn recomputes)")
                    continue
                await resp.write(frame(KIND_KV, chunk) if granted is None else json_frame(await granted.store(ev.form, chunk)))
            elif isinstance(ev, DoneEvent):
                if granted is not None:
                    await resp.write(json_frame({"type": "stats", "stats": granted.stats(ev.usage)}))
                await resp.write(json_frame({"type": "done", "finish_reason": ev.finish_reason, "usage": ev.usage}))
                done = True
            else:
                await resp.write(json_frame({"type": "error", "error": {"code": "internal", "message": ev.message}}))
                done = True
        if done:
            await resp.write_eof()
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        if not done:
            loop.abort(handle.seq_id)
    return resp


def make_app(config: Config, engine: LLMEngine | None = None, cuda_graphs: bool = True,
             compile_decode: bool = False) -> web.Application:
    """The server app. With `engine` None the model loads in the background after start-up (/readyz says when)."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    st = app[STATE] = ServerState(config)
    st.registry.register(EngineCollector(st))
    st.rejected = Counter("reprise_requests_rejected", "requests refused before generation", ["reason"],
                          registry=st.registry)
    st.refused = Counter("reprise_kv_chunks_refused", "granted KV chunks not used (their tokens recomputed)",
                         ["reason"], registry=st.registry)
    st.storage_bytes = Counter("reprise_storage_bytes", "bytes moved through storage grants", ["direction"],
                               registry=st.registry)
    st.k_mac = mac_key(config.secret or "")
    app.router.add_post("/v1/generate", generate)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)

    async def start_engine(app: web.Application):
        async def load():
            try:
                await _load()
            except Exception:
                log.exception("loading the model failed; /readyz stays 503")

        async def _load():
            eng = engine
            if eng is None:
                eng = await asyncio.get_running_loop().run_in_executor(
                    None, lambda: LLMEngine(config, cuda_graphs=cuda_graphs, compile_decode=compile_decode))
            await asyncio.get_running_loop().run_in_executor(None, lambda: eng.kv.producer)  # hash weights once
            loop = EngineLoop(eng, config.max_queue)
            loop.start()
            st.adapters = AdapterLoader(eng.adapters, st.http, st.storage_bytes.labels("get"))
            st.loop = loop
            log.info("model %s ready on %s", config.model, config.device)

        st.http = aiohttp.ClientSession(auto_decompress=False)
        task = asyncio.create_task(load())
        yield
        task.cancel()
        await st.http.close()
        if st.loop is not None:
            await st.loop.stop()

    app.cleanup_ctx.append(start_engine)
    return app
