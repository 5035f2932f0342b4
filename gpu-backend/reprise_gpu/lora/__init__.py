"""Multi-LoRA serving: PEFT adapters checked and kept on the host (registry), paged into the KV pool
(pool), and batched per step (batch). The kernels are kernels/lora_shrink.py and lora_expand.py."""
