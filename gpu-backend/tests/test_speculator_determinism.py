"""The CPU speculator: exact ops, and predictions bit-identical alone, batched, and chunked.

Tiny preset with random weights; K/V targets from the BF16 model itself.
"""

import functools

import numpy as np
import pytest
import torch

from reprise_gpu.codec.fp8cache import quantize_fp8
from reprise_gpu.codec.spec import decode_chunk, encode_chunk
from reprise_gpu.config import get_model_args
from reprise_gpu.gguf_loader import random_state_dict
from reprise_gpu.models.llama import build_model
from reprise_gpu.speculator import cpu_ops
from reprise_gpu.speculator.model import SeqInput, Speculator, SpeculatorPredictor
from reprise_gpu.speculator.quantize import create_quantized_state_dict
from reprise_gpu.speculator.recipe import get_recipe
from reprise_gpu.speculator.target import target_kv

RECIPES = ["w8a8", "w8a8-kv", "w8a8-kvx"]


@functools.cache
def tiny():
    args = get_model_args("tiny")
    sd = random_state_dict(args, seed=1)
    return args, sd, build_model(args, sd)


@functools.cache
def speculator(recipe: str) -> Speculator:
    args, sd, _ = tiny()
    return Speculator(create_quantized_state_dict(sd, args, get_recipe(recipe)))


@functools.cache
def sequence(seed: int, n: int):
    ids = torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed))
    kv = target_kv(tiny()[2], ids).float()                     # [L, 2, KH, n, D]
    return ids, kv


def predict(spec, seqs):
    """seqs: list of (seed, n, a, b): predict tokens [a, b) of sequence (seed, n) with exact/own past."""
    inputs, exact = [], []
    for seed, n, a, b in seqs:
        ids, kv = sequence(seed, n)
        past = kv[:, :, :, :a] if spec.recipe.exact_kv_attention else own_past(spec, seed, n, a)
        inputs.append(SeqInput(ids[a:b], a, past if a else None))
        exact.append(kv[:, :, :, a:b])
    return spec.predict_all(inputs, exact)


def own_past(spec, seed, n, a):
    if a == 0:
        return None
    ids, kv = sequence(seed, n)
    run = spec.start([SeqInput(ids[:a], 0)])
    for layer in range(spec.args.n_layers):
        run.predict(layer)
        run.observe(layer, [kv[layer, :, :, :a]])
    return run.own_past(0)


@pytest.mark.parametrize("recipe", RECIPES)
def test_alone_batched_and_chunked_are_bit_identical(recipe):
    spec = speculator(recipe)
    alone = predict(spec, [(0, 37, 0, 37)])[0]
    assert alone.shape == (2, 2, 2, 37, 16) and alone.dtype == torch.float32
    assert torch.equal(alone, predict(spec, [(0, 37, 0, 37)])[0])                    # deterministic
    for mix in ([(1, 5, 0, 5), (0, 37, 0, 37)], [(2, 64, 0, 64), (0, 37, 0, 37), (3, 1, 0, 1)],
                [(0, 37, 0, 37)] * 3, [(4, 133, 0, 133), (0, 37, 0, 37), (5, 20, 7, 20)]):
        out = predict(spec, mix)
        i = mix.index((0, 37, 0, 37))
        assert torch.equal(out[i], alone), mix
    for cut in (1, 16, 36):                                                           # prefill chunkings
        head, tail = predict(spec, [(0, 37, 0, cut)])[0], predict(spec, [(0, 37, cut, 37)])[0]
        assert torch.equal(torch.cat([head, tail], dim=3), alone), cut


@pytest.mark.parametrize("recipe", ["w8a8", "w8a8-kvx"])
@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8cache"])
def test_codec_round_trip_with_interleaved_decode(recipe, fp8):
    spec = speculator(recipe)
    ids, kv = sequence(6, 48)
    a, b = 16, 48
    target = quantize_fp8(kv[:, :, :, a:b].numpy()) if fp8 else kv[:, :, :, a:b].bfloat16().view(torch.int16).numpy().view(np.uint16)
    seen = torch.from_numpy(target.values()) if fp8 else kv[:, :, :, a:b]       # what the decoder will observe
    past = (torch.from_numpy(quantize_fp8(kv[:, :, :, :a].numpy()).values()) if fp8 else kv[:, :, :, :a])
    if not spec.recipe.exact_kv_attention:
        past = own_past(spec, 6, 48, a)
    pred = spec.predict_all([SeqInput(ids[a:b], a, past)], [seen], fp8_cache=fp8)[0]
    data = encode_chunk(target, pred.numpy(), fingerprint=spec.fingerprint, token_start=a)
    run = spec.start([SeqInput(ids[a:b], a, past)])
    res = decode_chunk(data, SpeculatorPredictor(run, fp8_cache=fp8), fingerprint=spec.fingerprint, layers=2, kv_heads=2,
                       head_dim=16, token_start=a, token_end=b)
    assert res.ok, res.message
    if fp8:
        assert np.array_equal(res.values.codes, target.codes) and np.array_equal(res.values.exps, target.exps)
    else:
        assert np.array_equal(res.values, target)
    other = speculator("w8a8-kv" if recipe == "w8a8" else "w8a8")
    assert other.fingerprint != spec.fingerprint


def test_fingerprint_names_recipe_weights_and_backend():
    fp = speculator("w8a8-kvx").fingerprint
    assert "w8a8-kvx" in fp and "backend=cpu-exact" in fp and speculator("w8a8-kvx").w.digest in fp


def test_exp_det_is_accurate():
    x = torch.linspace(-700, 700, 100001, dtype=torch.float64)
    rel = ((cpu_ops.exp_det(x) - torch.exp(x)) / torch.exp(x)).abs().max()
    assert rel < 4e-16
    assert cpu_ops.exp_det(torch.tensor([-1e4, -math_inf()], dtype=torch.float64)).tolist() == [0.0, 0.0]


def math_inf():
    return float("inf")


def test_tree_sum_ignores_trailing_zero_padding():
    x = torch.randn(3, 37, dtype=torch.float64)
    ref = cpu_ops.tree_sum(x)
    for pad in (1, 27, 91):
        assert torch.equal(cpu_ops.tree_sum(torch.cat([x, torch.zeros(3, pad, dtype=torch.float64)], 1)), ref)


def test_fp8_gemm_is_exact():
    g = torch.Generator().manual_seed(0)
    a = (torch.randn(5, 300, generator=g) * 100).to(torch.float8_e4m3fn)
    b = (torch.randn(7, 300, generator=g) * 100).to(torch.float8_e4m3fn)
    ia = (a.double() * 512).long()
    ib = (b.double() * 512).long()
    ref = ia @ ib.T                                              # int64 exact
    got = cpu_ops.fp8_gemm(a, torch.ones(5), b, torch.ones(7)) * 2.0 ** 18
    assert torch.equal(got.long(), ref)
    # a row's result is the same in any batch
    full = cpu_ops.fp8_gemm(a, torch.ones(5), b, torch.ones(7))
    assert torch.equal(cpu_ops.fp8_gemm(a[2:3], torch.ones(1), b, torch.ones(7)), full[2:3])


def test_attention_matches_float64_softmax():
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(9, 4, 16, generator=g), torch.randn(20, 2, 16, generator=g), torch.randn(20, 2, 16, generator=g)
    pos = torch.arange(11, 20)
    got = cpu_ops.attention(q, k, v, pos, 0.25)
    kk, vv = k.double().repeat_interleave(2, 1), v.double().repeat_interleave(2, 1)
    s = torch.einsum("qhd,khd->qhk", q.double(), kk) * 0.25
    s = s.masked_fill(torch.arange(20)[None, None, :] > pos[:, None, None], float("-inf"))
    ref = torch.einsum("qhk,khd->qhd", s.softmax(-1), vv)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
