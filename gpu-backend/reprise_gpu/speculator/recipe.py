"""What the FP8 speculator computes (`Recipe`) and the fingerprint a chunk is coded against.

Recipes (valid values in comments):
    "w8a8"      the design's predictor: every Linear in FP8 e4m3 (per-output-channel weight scales,
                dynamic per-token activation scales); attention over its own predicted K/V.
    "w8a8-kvx"  (default) the same FP8 body, plus three things that use the exact KV the decoder has
                already recovered: attention reads the exact K/V (prefix and, layer by layer, the chunk
                itself); the residual stream is corrected toward the K/V it just saw (a fixed ridge
                projection per layer); K/V projections use a two-term FP8 split of weights and activations
                (~BF16 accuracy) because their error lands directly in the prediction.
    "w8a8-kvx-fp8"  the same for FP8 caches, with a damped correction (ridge 0.1, measured on SmolLM2).
Cost knobs (issue 9: bits traded for predictor time on long histories), any recipe:
    window      attention sees only the last `window` positions (0: all): attention cost stops growing
                with the history, the prediction of far-back dependencies gets worse
    fast_accum  cuBLAS's fast FP8 accumulation in every GEMM (CUDA; the CPU path has one arithmetic)
Named: "<recipe>-fast" (fast_accum), "<recipe>-win<N>" (window N, fast_accum).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace

SPECULATOR_VERSION = "1"     # bump on any change to the arithmetic of either path


@dataclass(frozen=True)
class Recipe:
    name: str = "w8a8-kvx"
    exact_kv_attention: bool = True       # attention over decoded exact K/V (True) or its own predictions
    correction: bool = True               # nudge the residual stream toward the observed K/V
    correction_ridge: float = 0.01        # ridge / mean eigenvalue of W_eff W_eff^T; 0.01 measured best on SmolLM2
    kv_split: bool = True                 # K/V projections as x8*W8 + d8*W8 + x8*R8 (two-term FP8)
    window: int = 0                       # attention over the last `window` positions only (0: all)
    fast_accum: bool = False              # FP8 GEMMs with cuBLAS fast accumulation (CUDA)

    def describe(self) -> str:
        return ";".join(f"{k}={v}" for k, v in asdict(self).items())


RECIPES = {
    "w8a8": Recipe("w8a8", exact_kv_attention=False, correction=False, kv_split=False),
    "w8a8-kv": Recipe("w8a8-kv", exact_kv_attention=True, correction=False, kv_split=False),
    "w8a8-kvx": Recipe(),
    # FP8 caches: observations are FP8 cells (see model.fp8_observation), so the correction is damped
    "w8a8-kvx-fp8": Recipe("w8a8-kvx-fp8", correction_ridge=0.1),
}


for _base in ("w8a8", "w8a8-kv", "w8a8-kvx"):
    RECIPES[f"{_base}-fast"] = replace(RECIPES[_base], name=f"{_base}-fast", fast_accum=True)
    for _w in (512, 1024):
        RECIPES[f"{_base}-win{_w}"] = replace(RECIPES[_base], name=f"{_base}-win{_w}", window=_w, fast_accum=True)


def get_recipe(name: str, **overrides) -> Recipe:
    if name not in RECIPES:
        raise KeyError(f"unknown speculator recipe {name!r}; known: {sorted(RECIPES)}")
    return replace(RECIPES[name], **overrides)


def fingerprint(weights_digest: str, recipe: Recipe, backend: str) -> str:
    """Everything a prediction depends on: derived weights (hash), recipe, arithmetic version, backend.

    backend names the arithmetic: "cpu-exact" (float64 emulation, identical on every IEEE machine)
    or "cuda-sm90/triton-3.6.0/torch-2.11.0/..." (kernels and tile configs); a decoder with another
    fingerprint refuses the chunk (Status.FINGERPRINT_MISMATCH) and the caller recomputes.
    """
    text = f"reprise-speculator/{SPECULATOR_VERSION};{recipe.describe()};weights={weights_digest};backend={backend}"
    return text + ";sha256=" + hashlib.sha256(text.encode()).hexdigest()[:16]
