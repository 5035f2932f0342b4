"""Session KV chunks coded with spec-v1 (speculative KV coding), inside the RPKV container.

Encoding the chunk of tokens [s, e): the FP8 speculator predicts every layer's K/V of those tokens from
their token ids, the exact K/V of [0, s) (from the cache) and, layer by layer, the chunk's own exact K/V
(recipe w8a8-kvx); the codec codes the BF16 values against the predictions (docs/kv-codec-format.md).
Decoding runs the same speculator layer by layer on what it has decoded, so a chunk decodes only with
the token ids of its range and after every chunk before it, on a backend with the same speculator
fingerprint (weights, recipe, arithmetic); anything else is a ChunkError and the tokens are recomputed.
A sequence served with a LoRA adapter is coded by the speculator with the same adapter (FP8 base plus
BF16 LoRA on the un-quantized activations, speculator/lora.py); its fingerprint names the adapter.

Cost: the speculator is a GPU prefill. Encoding is the NumPy reference coder (a few million values per
second; SmolLM2 has 11,520 values per token) on this coder's own thread. Decoding on CUDA uses
codec.decode_torch (the rANS loop as a Triton kernel, the rest as tensor ops next to the speculator);
on the CPU the NumPy decoder.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from ..codec.decode_torch import decode_chunk_torch
from ..codec.rans_kernel import warm_up
from ..codec.spec import decode_chunk, encode_chunk
from ..lora.pool import dense
from ..speculator.lora import SpecLora
from ..speculator.model import SeqInput, Speculator, SpeculatorPredictor
from ..speculator.quantize import create_quantized_state_dict
from ..speculator.recipe import get_recipe
from .kv_io import ChunkError, KvChunk, encode_container

CODEC = "spec-v1"


class SpecKvCoder:
    def __init__(self, model: torch.nn.Module, device: torch.device, recipe: str = "w8a8-kvx",
                 model_name: str = "improved"):
        """Derives the speculator from the BF16 model's weights (on the CPU, so its digest does not
        depend on the machine) and runs it on `device`."""
        self.args = model.args
        sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        self.spec = Speculator(create_quantized_state_dict(sd, self.args, get_recipe(recipe)), device=device)
        self.model_name = model_name
        self._encoder = ThreadPoolExecutor(1, thread_name_prefix="kv-encode")
        self._loras: dict[str, SpecLora] = {}
        if self.spec.device.type == "cuda":
            warm_up(self.spec.device)

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
        GPU work is short and must not race the engine's next step for the cache); the NumPy coding,
        seconds per thousand tokens, runs on this coder's thread, so the engine keeps stepping."""
        if kv.dtype != torch.bfloat16:
            raise ValueError("spec-v1 codes BF16 caches")
        n = kv.shape[3]
        ids = torch.tensor(token_ids[start:start + n], dtype=torch.long)
        pred = self.spec.predict_all([SeqInput(ids, start, past)], [kv.float()], lora=self._lora(adapter))[0]
        pred = pred.cpu().numpy()
        fingerprint = self.fingerprint_for(adapter)
        bits = kv.cpu().contiguous().view(torch.int16).numpy().view(np.uint16)

        def code() -> bytes:
            payload = encode_chunk(bits, pred, fingerprint=fingerprint, token_start=start, model=self.model_name)
            return encode_container(producer, CODEC, tuple(kv.shape), start, payload)
        return self._encoder.submit(code)

    @torch.no_grad()
    def decode(self, chunk: KvChunk, token_ids: list[int], past: torch.Tensor | None, adapter=None) -> KvChunk:
        """The chunk with its K/V decoded (BF16, CPU); raises ChunkError for anything that fails."""
        s, e = chunk.token_start, chunk.token_end
        if e > len(token_ids):
            raise ChunkError("chunk reaches past the prompt's tokens")
        if s and (past is None or past.shape[3] != s):
            raise ChunkError("chunk needs the K/V of every token before it")
        a = self.args
        run = self.spec.start([SeqInput(torch.tensor(token_ids[s:e], dtype=torch.long), s, past)], self._lora(adapter))
        shape = dict(fingerprint=self.fingerprint_for(adapter), layers=a.n_layers, kv_heads=a.n_kv_heads, head_dim=a.head_dim,
                     token_start=s, token_end=e)
        if self.spec.device.type == "cuda":      # values stay on the GPU; the rANS loop is a Triton kernel
            res = decode_chunk_torch(chunk.payload, SpeculatorPredictor(run, tensors=True), device=self.spec.device,
                                     **shape)
        else:                                    # the NumPy reference decoder
            res = decode_chunk(chunk.payload, SpeculatorPredictor(run), **shape)
        if not res.ok:
            raise ChunkError(f"spec-v1: {res.status.name}: {res.message}")
        kv = torch.from_numpy(res.values.view(np.int16)).view(torch.bfloat16)
        return KvChunk(s, e, kv)


def decode_prefix(coder: SpecKvCoder | None, chunks: list[KvChunk], token_ids: list[int],
                  adapter=None) -> list[KvChunk]:
    """Decode `chunks` (a contiguous prefix from kv_io.restorable_prefix) in order; stops at the first
    chunk that cannot be decoded, so the result is again a contiguous prefix."""
    out: list[KvChunk] = []
    pieces: list[torch.Tensor] = []        # exact K/V of [0, covered)
    covered = 0
    for c in chunks:
        if c.kv is None:
            if coder is None or c.codec != CODEC:
                break
            past = torch.cat(pieces, dim=3)[:, :, :, :c.token_start] if c.token_start else None
            try:
                c = coder.decode(c, token_ids, past, adapter)
            except ChunkError:
                break
        out.append(c)
        if c.token_end > covered:
            pieces.append(c.kv[:, :, :, covered - c.token_start:])
            covered = c.token_end
    return out
