"""One home for session KV chunks in and out of the engine: who produced them, how they are coded,
verification (once per request), restore into the paged cache and export at the end of a turn.

    kv = KvRestore(model, kv_cache, device=..., dtype=..., kv_codec="raw" | "spec-v1")
    restored = kv.verify(chunk_bytes, prompt_token_ids)   # parse + check + decode, off the event loop
    kv.restore(seq)                                        # write seq.restored into its blocks
    future = kv.export(seq, start, end)                    # container bytes of tokens [start, end)

Container format: docs/kv-chunk-format.md (kv_io.py). Coded payloads: docs/kv-codec-format.md
(codec/api.py picks the NumPy or the tensor/Triton coder by device). A chunk is used only if every check
passes; anything else ends the restorable prefix there and the rest is recomputed from token ids.

Speculative chunks of tokens [s, e): the FP8 speculator predicts every layer's K/V of those tokens from
their ids, the exact K/V of [0, s) and, layer by layer, the chunk's own exact K/V (recipe w8a8-kvx). A
chunk therefore decodes only after every chunk before it, with the same speculator fingerprint.

A sequence served with a LoRA adapter: its chunks' producer (and spec-v1 fingerprint) names the adapter,
so they restore only into that adapter's sequences, and the speculator applies the same adapter (FP8
base plus BF16 LoRA on the un-quantized activations, speculator/lora.py).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata

import numpy as np
import torch

from ..codec import api as codec_api
from ..lora.pool import dense
from ..speculator.lora import SpecLora
from ..speculator.model import SeqInput, Speculator, SpeculatorPredictor
from ..speculator.quantize import create_quantized_state_dict
from ..speculator.recipe import get_recipe
from . import kv_io
from .kv_io import ChunkError, KvChunk
from .sequence import Sequence

log = logging.getLogger(__name__)

SPEC_CODECS = {"spec-v1": 1, "spec-v2": 2}     # container codec name -> spec version
KV_CODECS = ("raw", *SPEC_CODECS)


# ---- producer fingerprint ---------------------------------------------------------------------------

def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over (name, dtype, shape, bytes) of every parameter and buffer, in name order."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def device_capability(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda-sm{major}{minor}"
    return device.type


def package_version() -> str:
    """The installed distribution's version, or `reprise_gpu.__version__` when run from a source tree."""
    try:
        return metadata.version("reprise-gpu")
    except Exception:  # PackageNotFoundError from a source tree; broken metadata must not stop the server either
        from .. import __version__
        return __version__


def producer_fingerprint(weights_hash: str, dtype: torch.dtype, device: torch.device | str) -> str:
    version = package_version()
    return f"reprise-gpu/{version};weights=sha256:{weights_hash};dtype={str(dtype).removeprefix('torch.')};" \
           f"device={device_capability(device)}"


# ---- the speculative coder ----------------------------------------------------------------------------

class SpecKvCoder:
    def __init__(self, model: torch.nn.Module, device: torch.device, recipe: str = "w8a8-kvx",
                 model_name: str = "improved", codec: str = "spec-v2", derive: str = "cpu"):
        """Derives the speculator from the BF16 model's weights (on the CPU by default, so its digest does
        not depend on the machine; derive="device": on `device`) and runs it on `device`. `codec`: what
        export writes (both decode)."""
        self.args, self.codec, self.version = model.args, codec, SPEC_CODECS[codec]
        where = torch.device("cpu") if derive == "cpu" else torch.device(device)
        sd = {k: v.detach().to(where) for k, v in model.state_dict().items()}
        self.spec = Speculator(create_quantized_state_dict(sd, self.args, get_recipe(recipe), device=where),
                               device=device)
        self.model_name = model_name
        self._encoder = ThreadPoolExecutor(1, thread_name_prefix="kv-encode")
        self._loras: dict[str, SpecLora] = {}
        codec_api.warm_up(self.spec.device)

    @property
    def fingerprint(self) -> str:
        return self.spec.fingerprint

    def fingerprint_for(self, adapter) -> str:
        return self.fingerprint if adapter is None else f"{self.fingerprint};lora=sha256:{adapter.key}"

    def _lora(self, adapter) -> SpecLora | None:
        """The speculator's copy of a pool adapter (its served BF16 values), a few kept by key."""
        if adapter is None:
            return None
        sl = self._loras.get(adapter.key)
        if sl is None:
            a, b = dense(adapter, self.args)
            sl = SpecLora(adapter.key, adapter.scaling, a, b).to(self.spec.device)
            if len(self._loras) >= 8:
                self._loras.pop(next(iter(self._loras)))
            self._loras[adapter.key] = sl
        return sl

    @torch.no_grad()
    def encode_async(self, token_ids: list[int], past: torch.Tensor | None, kv: torch.Tensor, start: int,
                     producer: str, adapter=None) -> Future[bytes]:
        """Container bytes for kv (BF16 [L, 2, KH, n, D]) of tokens [start, start + n); past: the exact
        K/V of [0, start) or None when start == 0. The speculator runs now, on the caller's thread (the
        GPU work is short and must not race the engine's next step for the cache). On CUDA the GPU coder
        codes now too (spec-v2: milliseconds); the container's SHA-256, or the NumPy coder (seconds per
        thousand tokens), runs on this coder's thread, so the engine keeps stepping."""
        if kv.dtype != torch.bfloat16:
            raise ValueError(f"{self.codec} codes BF16 caches")
        n = kv.shape[3]
        ids = torch.tensor(token_ids[start:start + n], dtype=torch.long)
        pred = self.spec.predict_all([SeqInput(ids, start, past)], [kv.float()], lora=self._lora(adapter))[0]
        bits = kv.contiguous().view(torch.int16)
        args = dict(fingerprint=self.fingerprint_for(adapter), token_start=start, model=self.model_name, version=self.version)
        on_gpu = pred.is_cuda and self.version == 2
        # the GPU coder leaves the chunk on the GPU: its copy out happens on the coder thread
        payload = codec_api.encode(bits, pred, **args, as_tensor=True) if on_gpu else None
        if not on_gpu:
            pred, bits = pred.cpu(), bits.cpu()

        def code() -> bytes:
            body = payload.cpu().numpy().tobytes() if payload is not None else codec_api.encode(bits, pred, **args)
            return kv_io.encode_container(producer, self.codec, tuple(kv.shape), start, body)
        return self._encoder.submit(code)

    @torch.no_grad()
    def decode(self, chunk: KvChunk, token_ids: list[int], past: torch.Tensor | None, adapter=None) -> KvChunk:
        """The chunk with its K/V decoded (BF16); raises ChunkError for anything that fails. The container
        has checked the payload's SHA-256 already, so the codec does not hash the same bytes again."""
        s, e = chunk.token_start, chunk.token_end
        if e > len(token_ids):
            raise ChunkError("chunk reaches past the prompt's tokens")
        if s and (past is None or past.shape[3] != s):
            raise ChunkError("chunk needs the K/V of every token before it")
        a = self.args
        run = self.spec.start([SeqInput(torch.tensor(token_ids[s:e], dtype=torch.long), s, past)], self._lora(adapter))
        on_gpu = self.spec.device.type == "cuda"
        res = codec_api.decode(chunk.payload, SpeculatorPredictor(run, tensors=on_gpu), fingerprint=self.fingerprint_for(adapter),
                           layers=a.n_layers, kv_heads=a.n_kv_heads, head_dim=a.head_dim, token_start=s, token_end=e,
                           device=self.spec.device, payload_verified=True)
        if not res.ok:
            raise ChunkError(f"{chunk.codec}: {res.status.name}: {res.message}")
        v = res.values
        kv = (v if isinstance(v, torch.Tensor) else torch.from_numpy(v.view(np.int16))).view(torch.bfloat16)
        return KvChunk(s, e, kv)


# ---- verify, restore, export ------------------------------------------------------------------------

@dataclass
class Restored:
    """The verified, decoded chunks covering tokens [0, tokens) of one prompt, in order."""
    chunks: list[KvChunk] = field(default_factory=list)
    tokens: int = 0
    refused: list[str] = field(default_factory=list)     # why each refused chunk was refused
    # (token_start, reason) of the chunk that ended the prefix; reason: corrupt | foreign | undecodable
    refused_at: tuple[int, str] | None = None
    decode_s: float = 0.0                                 # time in the coded decoder (speculator included)
    decoded_bytes: int = 0                                # BF16 K/V bytes it produced
    verify_s: float = 0.0                                 # time checking containers (SHA-256) and raw payloads
    verify_bytes: int = 0                                 # container bytes checked


def refusal_reason(e: ChunkError) -> str:
    """A chunk failure as the edge counts it: another model or shape is foreign, a coded chunk that
    does not decode is undecodable, anything else about the bytes is corrupt."""
    msg = str(e)
    if msg.startswith("spec-v1") or "needs the K/V" in msg or "past the prompt" in msg:
        return "undecodable"
    if "another model" in msg or "shape does not match" in msg:
        return "foreign"
    return "corrupt"


class KvRestore:
    def __init__(self, model: torch.nn.Module, kv_cache: torch.Tensor, *, device: torch.device | str,
                 dtype: torch.dtype, kv_codec: str = "raw", recipe: str = "w8a8-kvx", derive: str = "cpu"):
        if kv_codec not in KV_CODECS:
            raise ValueError(f"kv_codec must be one of {KV_CODECS}")
        self.model, self.kv_cache = model, kv_cache
        self.args, self.device, self.dtype = model.args, torch.device(device), dtype
        self._weights_sha256: str | None = None
        # "raw": chunks carry the cache's own dtype; "spec-v1"/"spec-v2": coded against the FP8 speculator
        self.coder = (SpecKvCoder(model, self.device, recipe=recipe, codec=kv_codec, derive=derive)
                      if kv_codec in SPEC_CODECS else None)

    @property
    def producer(self) -> str:
        if self._weights_sha256 is None:
            self._weights_sha256 = weights_sha256(self.model)
        return producer_fingerprint(self._weights_sha256, self.dtype, self.device)

    def producer_for(self, adapter) -> str:
        """The producer of K/V computed with `adapter` (None: the base model): another adapter's chunks,
        or the base model's, never restore into this one's sequence."""
        return self.producer if adapter is None else f"{self.producer};lora=sha256:{adapter.key}"

    def parse(self, data: bytes | kv_io.Verified, adapter=None) -> KvChunk:
        """One container, checked (producer, shape, payload SHA-256); raw codecs decoded, coded ones not yet."""
        a = self.args
        return kv_io.decode_chunk(data, producer=self.producer_for(adapter), layers=a.n_layers, kv_heads=a.n_kv_heads,
                                  head_dim=a.head_dim, dtype=self.dtype, coded=tuple(SPEC_CODECS) if self.coder else ())

    def verify(self, kv_chunks: list[bytes], prompt_token_ids: list[int], adapter=None) -> Restored:
        """The restorable prefix of `kv_chunks` for this prompt (at most len(prompt) - 1 tokens: the last
        prompt token is always computed, it yields the first logits). Each chunk is parsed and checked
        once; coded chunks are decoded in token order and the prefix ends at the first that fails.
        Seconds per thousand tokens with the NumPy coder: the server calls this off the event loop."""
        out = Restored()
        parsed = []
        for i, data in enumerate(kv_chunks):
            try:
                parsed.append(self.parse(data, adapter))
            except ChunkError as e:
                out.refused.append(f"chunk {i}: {e}")
        used, _ = kv_io.restorable_prefix(parsed, len(prompt_token_ids) - 1)
        pieces: list[torch.Tensor] = []        # exact K/V of [0, covered)
        covered = 0
        for c in used:
            covered = self._take(out, c, pieces, covered, prompt_token_ids, adapter)
            if covered < 0:
                break
        return self._done(out, prompt_token_ids)

    def verify_stream(self, kv_chunks: Iterable[bytes | kv_io.Verified], prompt_token_ids: list[int], start: int = 0,
                      adapter=None) -> Restored:
        """`verify` for chunks that arrive in token order while they are still being fetched (the
        grant path, server/storage_io.py): each is parsed and decoded as soon as it is here, so the
        fetch of chunk i+1 overlaps the speculator and decoder of chunk i. The iterator ends early
        (or raises StopIteration) where a chunk could not be fetched; the prefix ends there too.
        `start` > 0: the chunks cover [start, …) and tokens before it are computed (a split restore of
        raw chunks; a coded chunk there lacks its past and is refused). `adapter` as in `verify`."""
        out = Restored()
        limit = len(prompt_token_ids) - 1
        pieces: list[torch.Tensor] = []
        covered = start
        for data in kv_chunks:
            t0 = time.perf_counter()
            try:
                c = self.parse(data, adapter)
                out.verify_bytes += len(data.data if isinstance(data, kv_io.Verified) else data)
            except ChunkError as e:
                out.refused.append(f"chunk at token {covered}: {e}")
                out.refused_at = (covered, refusal_reason(e))
                break
            finally:
                out.verify_s += time.perf_counter() - t0
            if c.token_start > covered or covered >= limit:
                break
            if c.token_end <= covered:
                continue
            covered = self._take(out, c, pieces, covered, prompt_token_ids, adapter)
            if covered < 0:
                break
        return self._done(out, prompt_token_ids)

    def _take(self, out: Restored, c: KvChunk, pieces: list[torch.Tensor], covered: int,
              prompt_token_ids: list[int], adapter=None) -> int:
        """Decodes `c` if it is coded and appends it; the new covered end, or -1 when it fails."""
        if c.kv is None:
            past = torch.cat(pieces, dim=3)[:, :, :, :c.token_start] if c.token_start and pieces else None
            t0 = time.perf_counter()
            try:
                c = self.coder.decode(c, prompt_token_ids, past, adapter)
            except ChunkError as e:
                out.refused.append(f"chunk at token {c.token_start}: {e}")
                out.refused_at = (c.token_start, refusal_reason(e))
                return -1
            out.decode_s += time.perf_counter() - t0
            out.decoded_bytes += c.kv.numel() * c.kv.element_size()
        out.chunks.append(c)
        if c.token_end > covered:
            pieces.append(c.kv[:, :, :, covered - c.token_start:])
            covered = c.token_end
        out.tokens = covered
        return covered

    @staticmethod
    def _done(out: Restored, prompt_token_ids: list[int]) -> Restored:
        out.tokens = min(max((c.token_end for c in out.chunks), default=0), max(len(prompt_token_ids) - 1, 0))
        for why in out.refused:
            log.info("KV %s; its tokens are recomputed", why)
        return out

    def restore(self, seq: Sequence) -> None:
        """Write tokens [0, seq.num_restored) from seq.restored into the sequence's blocks."""
        for c in seq.restored:
            lo, hi = max(c.token_start, 0), min(c.token_end, seq.num_restored)
            if lo < hi:
                kv_io.scatter_kv(self.kv_cache, seq.block_table, lo, c.kv[:, :, :, lo - c.token_start:hi - c.token_start])

    def export(self, seq: Sequence, start: int, end: int, form: str | None = None) -> Future[bytes]:
        """The chunk of tokens [start, end), read from the cache now (the blocks are freed next). Raw
        chunks are done at once; speculative ones predict (and on CUDA code) now, see SpecKvCoder.
        `form`: None for this engine's codec, "raw" for the cache's own dtype, "coded" for its speculative
        codec (raw when this engine has no coder)."""
        kv = kv_io.gather_kv(self.kv_cache, seq.block_table, start, end)
        producer = self.producer_for(seq.adapter)
        if self.coder is None or form == "raw":
            done: Future[bytes] = Future()
            done.set_result(kv_io.encode_chunk(kv, start, producer))
            return done
        past = kv_io.gather_kv(self.kv_cache, seq.block_table, 0, start) if start else None
        return self.coder.encode_async(seq.token_ids, past, kv, start, producer, seq.adapter)
