"""The LoRA half of one step's inputs: which adapter slot each token uses (beside AttnMetadata).

Prefill and mixed steps give each sequence's new tokens as one segment (SGMV reads an adapter's rows
once per block of tokens); pure decode steps give a slot per token (BGMV). Decode steps in CUDA graphs
do not come here: the runner writes the slots into its graph's own buffer (engine/model_runner.py).
"""

from __future__ import annotations

import numpy as np
import torch

from ..layers.linear import LoraMetadata


def step_metadata(pool, slots: list[int], num_new: list[int], device: torch.device) -> LoraMetadata | None:
    """slots[i]: sequence i's adapter slot (-1: none), for its num_new[i] new tokens; None if no adapter."""
    if pool is None or all(s < 0 for s in slots):
        return None
    tok = torch.from_numpy(np.repeat(np.asarray(slots, dtype=np.int32), num_new)).to(device, non_blocking=True)
    if all(n == 1 for n in num_new):
        return pool.metadata(tok)
    starts = np.concatenate([[0], np.cumsum(num_new)]).astype(np.int32)
    return pool.metadata(tok, torch.from_numpy(starts).to(device, non_blocking=True),
                         torch.tensor(slots, dtype=torch.int32).to(device, non_blocking=True), max(num_new))
