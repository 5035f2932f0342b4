"""Bias-free projections that may add a batch of LoRA adapters (`LoraLinear`), and what they read (`LoraMetadata`).

    y = x W^T + scaling[a] * (x A_a^T) B_a^T       for each token's adapter a (none: y = x W^T)

The adapters' A rows and B^T rows sit in pages of the paged KV pool (lora/pool.py owns the layout); a
LoraLinear only knows its layer, which of LORA_MODULES its output slices are, and where each slice's
columns start. Shrink and expand are two kernels per projection (layers/ops.py picks SGMV for prefill
segments, sorted token tiles (or BGMV per token) for decode). State-dict names and weights are nn.Linear's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import ops

# PEFT's target-module names in the kernels' module order: a fused projection is a run of consecutive ones.
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ALL_MODULES = (1 << len(LORA_MODULES)) - 1      # bit i: LORA_MODULES[i]
ATTN_MODULES = 0b1111                           # q, k, v, o: a decode graph set of its own (model_runner.py)


@dataclass
class LoraMetadata:
    """The adapters of one step's T tokens (beside AttnMetadata; built by the engine's LoRA batch)."""
    pool: torch.Tensor          # [n_layers, P]: each layer's slab of the KV cache, flat (model dtype)
    a_off: torch.Tensor         # int32 [S, len(LORA_MODULES), R_MAX]: element offset of A's row j in a slab
    b_off: torch.Tensor         # int32 [S, len(LORA_MODULES), R_MAX]: the same for B^T's rows
    ranks: torch.Tensor         # int32 [S, len(LORA_MODULES)]: rank per slot and module, 0 = no LoRA there
    scaling: torch.Tensor       # float32 [S]: lora_alpha / r (or / sqrt(r) for rsLoRA)
    token_slots: torch.Tensor   # int32 [T]: each token's slot, -1 = base model only
    seg_starts: torch.Tensor | None = None   # int32 [G+1]: prefill segments of tokens sharing a slot (SGMV)
    seg_slots: torch.Tensor | None = None    # int32 [G]
    max_seg_len: int = 0
    order: torch.Tensor | None = None        # int32 [T]: decode tokens sorted by slot (kernels/lora_tiles.py)
    tiles: torch.Tensor | None = None        # int32 [T, 3]: (start, end, slot) into order; slot -1 = unused
    # Bit i set: some adapter of the step may target LORA_MODULES[i]. A projection with none of its bits set
    # launches nothing: at the 8B shape the shrink/expand grids of an untargeted gate_up and down still cost
    # ~47 us per layer of programs that exit at once (bench/results/lora-tiles-h200-2026-12-02).
    modules: int = ALL_MODULES

    @property
    def segmented(self) -> bool:
        return self.seg_starts is not None


class LoraLinear(nn.Linear):
    """nn.Linear (no bias) whose output slices may carry LoRA deltas: module LORA_MODULES[mod0 + s] owns
    columns slices[s] = (start, width)."""

    def __init__(self, in_features: int, out_features: int, *, layer: int, mod0: int,
                 slices: tuple[tuple[int, int], ...]):
        super().__init__(in_features, out_features, bias=False)
        assert sum(n for _, n in slices) == out_features
        self.layer, self.mod0, self.slices = layer, mod0, slices

    def forward(self, x: torch.Tensor, lora: LoraMetadata | None = None) -> torch.Tensor:
        y = F.linear(x, self.weight)
        if lora is not None and (lora.modules >> self.mod0) & ((1 << len(self.slices)) - 1):
            ops.lora_add(y, x, lora, self.layer, self.mod0, self.slices)
        return y
