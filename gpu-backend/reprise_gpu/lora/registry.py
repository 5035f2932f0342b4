"""PEFT LoRA adapters: parse and check the two files, and keep parsed adapters in a bounded host LRU.

An adapter is what PEFT's `save_pretrained` writes: adapter_config.json and adapter_model.safetensors
with, per decoder layer i and target module m,
    base_model.model.model.layers.{i}.{self_attn|mlp}.{m}.lora_A.weight   [r, in_m]
    base_model.model.model.layers.{i}.{self_attn|mlp}.{m}.lora_B.weight   [out_m, r]
and y = x W^T + (lora_alpha / r) * x A^T B^T (lora_alpha / sqrt(r) with use_rslora).
Both files are hostile until every check here passes: sizes, JSON, the config keys that change the math,
the exact tensor set, shapes, dtypes and finiteness. Any failure is an AdapterError with a message meant
for the uploader (the edge runs the same checks before storing; docs/lora-adapters.md).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ..config import ModelArgs
from ..kernels.lora_shrink import R_MAX
from ..layers.linear import LORA_MODULES

MIN_RANK = 4
MAX_CONFIG_BYTES = 64 << 10
HEADER_SLACK = 1 << 20             # the safetensors JSON header of the largest adapter is ~0.5 MB
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Base-model names an adapter may declare (last path component, lower case); none declared: shapes decide.
BASE_NAMES = {
    "smollm2-135m": {"smollm2-135m-instruct", "smollm2-135m"},
    "llama3-8b": {"meta-llama-3-8b", "llama-3-8b", "meta-llama-3-8b-instruct", "llama3-8b"},
    "tiny": {"tiny"},
}
# Config keys whose non-default value would change what the adapter computes: refused, not ignored.
UNSUPPORTED = {"use_dora": True, "lora_bias": True, "fan_in_fan_out": True, "use_qalora": True}
MUST_BE_EMPTY = ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform", "layer_replication",
                 "trainable_token_indices", "target_parameters", "alora_invocation_tokens")


class AdapterError(ValueError):
    """A malformed adapter; the message says what is wrong."""


@dataclass
class LoraAdapter:
    key: str                              # sha256 hex of the two files (length-prefixed config, then weights)
    rank: int
    scaling: float
    modules: tuple[str, ...]              # the targets, in LORA_MODULES order
    a: dict[str, torch.Tensor]            # module -> [n_layers, r, in_m], float32
    b: dict[str, torch.Tensor]            # module -> [n_layers, out_m, r], float32

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * 2 for t in [*self.a.values(), *self.b.values()])    # as served (BF16)


def module_shapes(args: ModelArgs) -> dict[str, tuple[int, int]]:
    """(in, out) features of each target module."""
    d, f = args.dim, args.ffn_dim
    return {"q_proj": (d, args.q_size), "k_proj": (d, args.kv_size), "v_proj": (d, args.kv_size),
            "o_proj": (args.q_size, d), "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}


def tensor_name(layer: int, module: str, which: str) -> str:
    block = "mlp" if module in ("gate_proj", "up_proj", "down_proj") else "self_attn"
    return f"base_model.model.model.layers.{layer}.{block}.{module}.lora_{which}.weight"


def adapter_key(config: bytes, weights: bytes) -> str:
    h = hashlib.sha256(len(config).to_bytes(8, "little"))
    h.update(config)
    h.update(weights)
    return h.hexdigest()


def parse_config(config: bytes, model: str) -> tuple[int, float, tuple[str, ...]]:
    """adapter_config.json -> (rank, scaling, target modules in LORA_MODULES order)."""
    if len(config) > MAX_CONFIG_BYTES:
        raise AdapterError(f"adapter_config.json is {len(config)} bytes; the limit is {MAX_CONFIG_BYTES}")
    try:
        c = json.loads(config.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AdapterError(f"adapter_config.json is not JSON: {e}") from None
    if not isinstance(c, dict):
        raise AdapterError("adapter_config.json must be a JSON object")
    if c.get("peft_type") != "LORA":
        raise AdapterError(f"peft_type must be \"LORA\", got {c.get('peft_type')!r}")
    r = c.get("r")
    if type(r) is not int or not MIN_RANK <= r <= R_MAX:
        raise AdapterError(f"r must be an integer from {MIN_RANK} to {R_MAX}, got {r!r}")
    alpha = c.get("lora_alpha", 8)
    if type(alpha) not in (int, float) or not math.isfinite(alpha) or alpha <= 0:
        raise AdapterError(f"lora_alpha must be a positive number, got {alpha!r}")
    targets = c.get("target_modules")
    if not isinstance(targets, list) or not targets or any(not isinstance(t, str) for t in targets):
        raise AdapterError("target_modules must be a non-empty list of module names (a regex string is not accepted)")
    unknown = sorted(set(targets) - set(LORA_MODULES))
    if unknown:
        raise AdapterError(f"target_modules {unknown} are not supported; allowed: {list(LORA_MODULES)}")
    if c.get("bias", "none") != "none":
        raise AdapterError(f"bias must be \"none\", got {c.get('bias')!r}")
    for k, bad in UNSUPPORTED.items():
        if c.get(k) == bad:
            raise AdapterError(f"{k}={bad} is not supported")
    for k in MUST_BE_EMPTY:
        if c.get(k):
            raise AdapterError(f"{k} is not supported (got {c[k]!r})")
    rslora = c.get("use_rslora", False)
    if type(rslora) is not bool:
        raise AdapterError("use_rslora must be a boolean")
    base = c.get("base_model_name_or_path")
    if base is not None:
        if not isinstance(base, str):
            raise AdapterError("base_model_name_or_path must be a string")
        name = base.rstrip("/").rsplit("/", 1)[-1].lower()
        if name and name not in BASE_NAMES.get(model, {model}):
            raise AdapterError(f"the adapter was trained for {base!r}; this model is {model!r}")
    scaling = alpha / math.sqrt(r) if rslora else alpha / r
    return r, float(scaling), tuple(m for m in LORA_MODULES if m in targets)


def max_weights_bytes(args: ModelArgs) -> int:
    """The largest valid adapter_model.safetensors: rank R_MAX on all seven projections in float32 (SmolLM2:
    156 MB; the 8B shape: 1.3 GB), plus its header. Anything larger is refused before it is parsed."""
    per_rank = sum(i + o for i, o in module_shapes(args).values())
    return args.n_layers * R_MAX * per_rank * 4 + HEADER_SLACK


def parse_weights(weights: bytes, args: ModelArgs, r: int, modules: tuple[str, ...]):
    """adapter_model.safetensors -> ({module: A [L, r, in]}, {module: B [L, out, r]}) as float32."""
    if len(weights) > max_weights_bytes(args):
        raise AdapterError(f"adapter_model.safetensors is {len(weights)} bytes; the limit for this model is "
                           f"{max_weights_bytes(args)}")
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors
    try:
        tensors = load_safetensors(weights)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as e:
        raise AdapterError(f"adapter_model.safetensors is not a valid safetensors file: {e}") from None
    shapes = module_shapes(args)
    expected = {tensor_name(i, m, w): ((r, shapes[m][0]) if w == "A" else (shapes[m][1], r))
                for i in range(args.n_layers) for m in modules for w in ("A", "B")}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing:
        raise AdapterError(f"{len(missing)} tensor(s) missing, e.g. {missing[0]}")
    if extra:
        raise AdapterError(f"{len(extra)} unexpected tensor(s), e.g. {extra[0]} (the config names {list(modules)})")
    for name, shape in expected.items():
        t = tensors[name]
        if t.dtype not in DTYPES:
            raise AdapterError(f"{name} is {t.dtype}; only float32, float16 and bfloat16 are accepted")
        if tuple(t.shape) != shape:
            raise AdapterError(f"{name} has shape {list(t.shape)}; expected {list(shape)} for this model and r={r}")
        if not torch.isfinite(t).all():
            raise AdapterError(f"{name} has a non-finite value (NaN or infinity)")
    stack = lambda m, w: torch.stack([tensors[tensor_name(i, m, w)].float() for i in range(args.n_layers)])  # noqa: E731
    return {m: stack(m, "A") for m in modules}, {m: stack(m, "B") for m in modules}


def parse_adapter(config: bytes, weights: bytes, args: ModelArgs, model: str) -> LoraAdapter:
    """Both files -> a checked LoraAdapter; raises AdapterError."""
    r, scaling, modules = parse_config(config, model)
    a, b = parse_weights(weights, args, r, modules)
    return LoraAdapter(adapter_key(config, weights), r, scaling, modules, a, b)


class AdapterRegistry:
    """Parsed adapters by key, least recently used dropped first beyond `capacity_bytes` (host memory).

    Values are what the GPU pool loads from (lora/pool.py packs them into pages); an adapter a request
    holds stays alive even if the LRU drops it, and is parsed again from its source next time."""

    def __init__(self, args: ModelArgs, model: str, capacity_bytes: int, pack=None):
        self.args, self.model, self.capacity = args, model, capacity_bytes
        self.pack = pack or (lambda ad: ad)
        self._lru: OrderedDict[str, object] = OrderedDict()
        self._bytes: dict[str, int] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._lru

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def nbytes(self) -> int:
        return sum(self._bytes.values())

    def get(self, key: str):
        item = self._lru.get(key)
        if item is not None:
            self._lru.move_to_end(key)
        return item

    def add(self, config: bytes, weights: bytes, key: str | None = None):
        """Parse (AdapterError if malformed), pack and keep; `key`, if given, must be the files' digest."""
        k = adapter_key(config, weights)
        if key is not None and key != k:
            raise AdapterError(f"adapter files do not match their key {key[:16]}... (got {k[:16]}...)")
        if k in self._lru:
            return self.get(k)
        return self.put(k, self.pack(parse_adapter(config, weights, self.args, self.model)))

    def put(self, key: str, item, nbytes: int | None = None):
        self._lru[key] = item
        self._bytes[key] = nbytes if nbytes is not None else getattr(item, "nbytes", 0)
        while len(self._lru) > 1 and self.nbytes > self.capacity:
            old, _ = self._lru.popitem(last=False)
            self._bytes.pop(old)
        return item
