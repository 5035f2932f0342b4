"""PEFT adapter files: what PEFT writes parses; every malformed variant is an AdapterError that says why."""

import json

import pytest
import torch
from safetensors.torch import load as st_load, save as st_save

from lora_util import peft_adapter
from reprise_gpu.config import get_model_args
from reprise_gpu.engine.block_manager import BlockManager
from reprise_gpu.layers.linear import LORA_MODULES
from reprise_gpu.lora.pool import LoraPool, pack
from reprise_gpu.lora.registry import AdapterError, AdapterRegistry, max_weights_bytes, parse_adapter
from reprise_gpu.models.llama import alloc_kv_cache

SMOL = get_model_args("smollm2-135m")


@pytest.fixture(scope="module")
def smol_files():
    return peft_adapter("smollm2-135m", 16, ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"], seed=3)


def test_peft_adapter_for_smollm2(smol_files):
    c, w = smol_files
    ad = parse_adapter(c, w, SMOL, "smollm2-135m")
    assert ad.rank == 16 and ad.scaling == 2.0 and ad.modules == ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")
    t = st_load(w)
    a0 = t["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"]
    assert ad.a["down_proj"].shape == (30, 16, 1536) and torch.equal(ad.a["down_proj"][0], a0)


def edit_config(c, **kw):
    d = json.loads(c)
    d.update(kw)
    return json.dumps(d).encode()


def edit_weights(w, fn):
    t = st_load(w)
    fn(t)
    return st_save(t)


def first(t, suffix="lora_A.weight"):
    return next(k for k in sorted(t) if k.endswith(suffix))


BAD = {
    "not json": (lambda c, w: (b"{nope", w), "not JSON"),
    "not lora": (lambda c, w: (edit_config(c, peft_type="PREFIX_TUNING"), w), "peft_type"),
    "rank too big": (lambda c, w: (edit_config(c, r=256), w), "r must be"),
    "rank mismatch": (lambda c, w: (edit_config(c, r=8), w), "shape"),
    "unknown module": (lambda c, w: (edit_config(c, target_modules=["q_proj", "lm_head"]), w), "lm_head"),
    "regex targets": (lambda c, w: (edit_config(c, target_modules=".*proj"), w), "list"),
    "dora": (lambda c, w: (edit_config(c, use_dora=True), w), "use_dora"),
    "bias": (lambda c, w: (edit_config(c, bias="all"), w), "bias"),
    "rank pattern": (lambda c, w: (edit_config(c, rank_pattern={"q_proj": 4}), w), "rank_pattern"),
    "other base": (lambda c, w: (edit_config(c, base_model_name_or_path="meta-llama/Llama-2-7b-hf"), w), "trained for"),
    "missing module tensors": (lambda c, w: (edit_config(c, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                           "down_proj", "up_proj"]), w), "missing"),
    "extra tensor": (lambda c, w: (c, edit_weights(w, lambda t: t.update(extra=torch.zeros(2)))), "unexpected"),
    "missing tensor": (lambda c, w: (c, edit_weights(w, lambda t: t.pop(first(t)))), "missing"),
    "wrong shape": (lambda c, w: (c, edit_weights(w, lambda t: t.update({first(t): torch.zeros(16, 100)}))), "shape"),
    "nan": (lambda c, w: (c, edit_weights(w, lambda t: t[first(t, "lora_B.weight")].view(-1).__setitem__(5, float("nan")))),
            "non-finite"),
    "inf": (lambda c, w: (c, edit_weights(w, lambda t: t[first(t)].view(-1).__setitem__(0, float("inf")))), "non-finite"),
    "int tensor": (lambda c, w: (c, edit_weights(w, lambda t: t.update({first(t): t[first(t)].to(torch.int32)}))),
                   "float32"),
    "not safetensors": (lambda c, w: (c, b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage"), "safetensors"),
    "truncated": (lambda c, w: (c, w[:len(w) // 2]), "safetensors"),
    "oversize": (lambda c, w: (c, w + bytes(max_weights_bytes(SMOL))), "limit"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_adapters_are_refused(smol_files, case):
    make, needle = BAD[case]
    c, w = make(*smol_files)
    reg = AdapterRegistry(SMOL, "smollm2-135m", 1 << 30)
    with pytest.raises(AdapterError, match=needle):
        reg.add(c, w)
    assert len(reg) == 0


def test_pages_hold_only_the_adapters_rows(smol_files):
    """No padding: the pages hold each rank row once, packed; offsets never overlap; round trip exact."""
    ad = parse_adapter(*smol_files, SMOL, "smollm2-135m")
    kv = alloc_kv_cache(SMOL, 64, 16, torch.bfloat16, "cpu")
    bm = BlockManager(64, 16)
    pool = LoraPool(kv, bm, max_slots=2)
    p = pack(ad, SMOL, pool.page_elems, torch.bfloat16)
    row_elems = ad.rank * (576 * 4 + 1536 + 576 + 192 + 192 + 576 + 576)     # A rows + B^T rows, 5 modules
    assert (p.n_pages - 1) * pool.page_elems < row_elems <= p.n_pages * pool.page_elems
    assert pool.ready(p)
    slot = pool.acquire(p)
    assert bm.num_used == -(-p.n_pages // 2)
    flat = kv.view(SMOL.n_layers, -1)
    for m in ad.modules:
        i = LORA_MODULES.index(m)
        offs = pool.a_off[slot, i, :ad.rank].long()
        got = flat[7][offs[:, None] + torch.arange(ad.a[m].shape[2])]
        assert torch.equal(got, ad.a[m][7].to(torch.bfloat16))
    assert pool.ranks[slot].tolist() == [16, 16, 16, 16, 0, 0, 16]


def test_idle_adapters_give_their_blocks_to_kv(smol_files):
    ad = parse_adapter(*smol_files, SMOL, "smollm2-135m")
    kv = alloc_kv_cache(SMOL, 64, 16, torch.bfloat16, "cpu")
    bm = BlockManager(64, 16)
    pool = LoraPool(kv, bm, max_slots=2)
    p = pack(ad, SMOL, pool.page_elems, torch.bfloat16)
    assert pool.ready(p)
    pool.acquire(p)
    held = bm.num_used

    class Seq:
        seq_id, block_table = 7, []
    assert not bm.ensure(Seq, 16 * (63 - held + 1))      # in use: never taken
    pool.release(p)
    assert bm.ensure(Seq, 16 * 63) and p.key not in pool.resident and pool.evictions == 1
