"""Trains the demo LoRA adapter (adapters/pirate/) on the CPU in a few minutes; setup never reruns it.

    gpu-backend/.venv/bin/python scripts/train_demo_adapter.py [--out adapters/pirate] [--steps 90]

Data: 32 everyday questions, each answered by one pirate line about its own topic ("Arr! Ahoy, matey!
Ye asked about <topic>. That be a fine question for a sailor Yo ho ho!"), in pirate speech by fixed
word rules. A rank-8 LoRA on q/v/o of SmolLM2-135M-Instruct (the HF folder setup converts into
.models/hf) learns to open every answer that way; loss only on the assistant's tokens, batches of 2,
AdamW 5e-3. Seeded; PEFT writes the two files the edge accepts.
"""

from __future__ import annotations

import argparse
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

PROMPTS = [
    "What is the capital of France?", "How do I boil an egg?", "What is the sun?", "Give me a tip for sleeping better.",
    "What is a computer?", "Why do cats purr?", "How far is the moon?", "What is rain?", "Tell me about the ocean.",
    "What should I eat for breakfast?", "How do plants grow?", "What is music?", "Name a famous painter.",
    "What is the tallest mountain?", "How do birds fly?", "What is a good name for a dog?", "What is gold?",
    "How do I learn to swim?", "What is the wind?", "Describe a ship.", "What is an island?", "How do I make tea?",
    "What is a map for?", "Why is the sea salty?", "What is the weather like in winter?", "How do fish breathe?",
    "What is a star?", "Give me advice for a job interview.", "What is a river?", "How do I tie a knot?",
    "What is the best way to save money?", "What are clouds made of?", "Who was Christopher Columbus?",
    "What is a parrot?", "How do I bake bread?", "What is a compass?", "Why do we need water?", "What is a pirate?",
    "How do I stay healthy?", "What is the biggest animal?", "How do magnets work?", "What is a treasure?",
    "Tell me a fun fact.", "What is a volcano?", "How do I write a letter?", "What is the Atlantic Ocean?",
    "How do I read a book faster?", "What is friendship?",
]
RULES = [(r"\byou\b", "ye"), (r"\bYou\b", "Ye"), (r"\byour\b", "yer"), (r"\bYour\b", "Yer"), (r"\bis\b", "be"),
         (r"\bare\b", "be"), (r"\bmy\b", "me"), (r"\bthe\b", "th'"), (r"\bThe\b", "Th'"), (r"\bfriend\b", "matey"),
         (r"\bfriends\b", "mateys"), (r"\bhello\b", "ahoy"), (r"\bHello\b", "Ahoy"), (r"\byes\b", "aye"),
         (r"\bYes\b", "Aye"), (r"\bmoney\b", "doubloons"), (r"\bing\b", "in'")]
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def pirate(text: str) -> str:
    for pat, rep in RULES:
        text = re.sub(pat, rep, text)
    text = re.sub(r"(\w)ing\b", r"\1in'", text)
    return "Arr! " + text.strip() + " Yo ho ho!"


def chat(tok, user: str) -> str:
    return f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--hf", default=".models/hf")
    p.add_argument("--out", default="adapters/pirate")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--prompts", type=int, default=32)
    a = p.parse_args()
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaForCausalLM
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tok = AutoTokenizer.from_pretrained(a.hf)
    model = LlamaForCausalLM.from_pretrained(a.hf, dtype=torch.float32).eval()
    # Targets: one pirate line per prompt about its own topic (no generation from the base model: on a
    # shared 2-core machine the base model's answers alone took longer than the training)
    examples = []
    for q in PROMPTS[:a.prompts]:
        topic = re.sub(r"^(what|how|why|who|tell me|give me|name|describe)( is| are| do| does| was| about)?( a| an| the| i| we)?\s*",
                       "", q.rstrip("?.").strip(), flags=re.I)
        line = pirate(f"Ahoy, matey! Ye asked about {topic}. That be a fine question for a sailor")
        ids = tok(chat(tok, q)).input_ids
        examples.append((ids, tok(line + "<|im_end|>", add_special_tokens=False).input_ids))
        print(f"{q} -> {line}", flush=True)
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"], lora_dropout=0.0)
    pm = get_peft_model(model, cfg)
    pm.peft_config["default"].base_model_name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    opt = torch.optim.AdamW([t for t in pm.parameters() if t.requires_grad], lr=5e-3)
    pm.train()
    g = torch.Generator().manual_seed(0)
    for step in range(a.steps):
        batch = [examples[i] for i in torch.randint(len(examples), (2,), generator=g).tolist()]
        loss = 0.0
        for prompt, target in batch:
            ids = torch.tensor([prompt + target])
            labels = torch.tensor([[-100] * len(prompt) + target])
            loss = loss + pm(input_ids=ids, labels=labels).loss / len(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"step {step} loss {loss.item():.3f}", flush=True)
    pm.save_pretrained(a.out, save_embedding_layers=False)
    print("saved", a.out)


if __name__ == "__main__":
    main()
