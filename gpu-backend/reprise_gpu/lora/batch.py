"""The LoRA half of one step's inputs: which adapter slot each token uses (beside AttnMetadata).

Prefill and mixed steps give each sequence's new tokens as one segment (SGMV reads an adapter's rows
once per block of tokens); pure decode steps give a slot per token and the same tokens sorted into
adapter tiles (kernels/lora_tiles.py; BGMV reads only the slots). Decode steps in CUDA graphs do not come
here: the runner writes slots, order and tiles into its graph's own buffer (engine/model_runner.py).
"""

from __future__ import annotations

import numpy as np
import torch

from ..kernels.lora_tiles import build_tiles
from ..layers.linear import ALL_MODULES, LoraMetadata


def step_metadata(pool, slots: list[int], num_new: list[int], device: torch.device,
                  modules: int = ALL_MODULES) -> LoraMetadata | None:
    """slots[i]: sequence i's adapter slot (-1: none), for its num_new[i] new tokens; None if no adapter.
    modules: the union of the step's adapters' module masks (projections outside it launch nothing)."""
    if pool is None or all(s < 0 for s in slots):
        return None
    slots_np = np.repeat(np.asarray(slots, dtype=np.int32), num_new)
    tok = torch.from_numpy(slots_np).to(device, non_blocking=True)
    if all(n == 1 for n in num_new):
        order, tiles = build_tiles(slots_np)
        return pool.metadata(tok, order=torch.from_numpy(order).to(device, non_blocking=True),
                             tiles=torch.from_numpy(tiles).to(device, non_blocking=True), modules=modules)
    starts = np.concatenate([[0], np.cumsum(num_new)]).astype(np.int32)
    return pool.metadata(tok, torch.from_numpy(starts).to(device, non_blocking=True),
                         torch.tensor(slots, dtype=torch.int32).to(device, non_blocking=True), max(num_new),
                         modules=modules)
