"""Per-request sampling knobs and batched sampling that does not depend on the batch.

Each row of a batch is sampled on its own: greedy rows take the argmax, the others draw their
noise from the request's own seeded `torch.Generator`, so a seed gives the same tokens whether
the request runs alone or among others (given the same logits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(slots=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0        # 0: greedy
    top_p: float = 1.0              # nucleus mass kept, in (0, 1]
    seed: int | None = None         # None: a fresh random seed
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2^63), got {self.seed}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop strings must be non-empty strings")
        self.stop = list(self.stop)
        self.stop_token_ids = [int(t) for t in self.stop_token_ids]

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_dict(cls, d: dict) -> "SamplingParams":
        """Wire names: max_tokens, temperature, top_p, seed, stop, stop_token_ids, ignore_eos."""
        known = {"max_tokens", "temperature", "top_p", "seed", "stop", "stop_token_ids", "ignore_eos"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown sampling fields: {sorted(unknown)}")
        stop = d.get("stop", [])
        if isinstance(stop, str):
            stop = [stop]
        kw = {k: d[k] for k in known & set(d) if d[k] is not None and k != "stop"}
        return cls(stop=list(stop), **kw)


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator:
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]) -> list[int]:
    """One token per row. logits: [n, vocab] float32; params/generators: n entries each."""
    n = logits.shape[0]
    out = [0] * n
    greedy = [i for i, p in enumerate(params) if p.greedy]
    if len(greedy) == n:
        return logits.argmax(dim=-1).tolist()
    if greedy:
        idx = torch.tensor(greedy, device=logits.device)
        for i, t in zip(greedy, logits.index_select(0, idx).argmax(dim=-1).tolist()):
            out[i] = t
    rand = [i for i, p in enumerate(params) if not p.greedy]
    idx = torch.tensor(rand, device=logits.device)
    temps = torch.tensor([params[i].temperature for i in rand], device=logits.device, dtype=torch.float32)
    probs = torch.softmax(logits.index_select(0, idx) / temps[:, None], dim=-1)
    top_ps = [params[i].top_p for i in rand]
    if min(top_ps) < 1.0:
        probs = _top_p_filter(probs, torch.tensor(top_ps, device=logits.device, dtype=torch.float32))
    # Exponential race: argmax p_i / E_i with E_i ~ Exp(1) draws i with probability p_i.
    noise = torch.empty_like(probs)
    for r, i in enumerate(rand):
        noise[r].exponential_(generator=generators[i])
    for i, t in zip(rand, (probs / noise).argmax(dim=-1).tolist()):
        out[i] = t
    return out


def _top_p_filter(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Zero the tail of each row beyond the smallest set whose mass reaches top_p (row's top token always kept)."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_p.cumsum(dim=-1) - sorted_p
    sorted_p = sorted_p.masked_fill(mass_before >= top_p[:, None], 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_p)
