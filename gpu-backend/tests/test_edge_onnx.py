"""The edge model conversion (scripts/convert_edge_model.py): block repacking is exact, and the
converted ONNX model, when present, decodes the fixture's tokens with and without its KV cache."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import convert_edge_model as cem  # noqa: E402

ONNX = REPO / ".models" / "onnx" / cem.ONNX_NAME
FIXTURE = REPO / "test" / "fixtures" / "edge-greedy.json"


def random_q4_1(rng, rows, blocks):
    """Random Q4_1 rows: per block d f16, m f16, 16 bytes of nibbles; plus the values they encode."""
    d = (rng.standard_normal((rows, blocks)) * 0.02).astype(np.float16)
    d[0, 0] = 0  # a flat block
    m = (rng.standard_normal((rows, blocks)) * 0.1).astype(np.float16)
    q = rng.integers(0, 16, (rows, blocks, 32), dtype=np.uint8)
    qs = (q[..., :16] | (q[..., 16:] << 4)).astype(np.uint8)
    raw = np.concatenate([d[..., None].view(np.uint8), m[..., None].view(np.uint8), qs], axis=-1)
    ref = d.astype(np.float32)[..., None] * q + m.astype(np.float32)[..., None]
    return raw.reshape(rows, -1), ref.reshape(rows, -1)


def test_q4_1_repack_reproduces_ggml_values():
    raw, ref = random_q4_1(np.random.default_rng(0), 7, 5)
    got = cem.nbits_dequant(*cem.q4_1_to_nbits(raw))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_q8_0_repack_reproduces_ggml_values():
    rng = np.random.default_rng(1)
    d = (rng.random((3, 4)) * 0.01).astype(np.float16)
    q = rng.integers(-128, 128, (3, 4, 32)).astype(np.int8)
    raw = np.concatenate([d[..., None].view(np.uint8), q.view(np.uint8)], axis=-1).reshape(3, -1)
    u8, scale = cem.q8_0_to_u8(raw)
    got = (u8.astype(np.float32) - 128) * scale[..., None]
    np.testing.assert_array_equal(got, d.astype(np.float32)[..., None] * q)


@pytest.mark.parametrize("n_head", [3, 9])
def test_unpermute_inverts_llama_cpp_permute(n_head):
    w = np.arange(n_head * 64 * 5).reshape(n_head * 64, 5)
    # llama.cpp convert_hf_to_gguf.py: reshape(n_head, 2, rows/n_head/2, ...).swapaxes(1, 2)
    permuted = w.reshape(n_head, 2, w.shape[0] // n_head // 2, 5).swapaxes(1, 2).reshape(w.shape)
    np.testing.assert_array_equal(cem.unpermute_rows(permuted, n_head), w)


@pytest.mark.skipif(not (ONNX.exists() and FIXTURE.exists()), reason="run scripts/convert_edge_model.py first")
def test_onnx_decodes_fixture_tokens_with_and_without_kv_cache():
    fx = json.loads(FIXTURE.read_text())
    if fx["model_sha256"] != cem.model_digest(ONNX):
        pytest.skip("fixture is from another conversion; rerun scripts/convert_edge_model.py")
    case = fx["cases"][0]
    lm = cem.OnnxLM(ONNX)
    n = 4
    assert lm.greedy_kv(case["prompt_ids"], n) == case["onnx_greedy_ids"][:n]
    assert lm.greedy_full(case["prompt_ids"], n) == case["onnx_greedy_ids"][:n]
    assert lm.greedy_kv(case["prompt_ids"], n, split=5) == case["onnx_greedy_ids"][:n]
