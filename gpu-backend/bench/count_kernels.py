"""Count the kernels one decode step launches, on the CPU (no GPU needed).

    python bench/count_kernels.py [--models smollm2-135m llama3-8b] [--batch 16] [--modes reference triton]

Runs the decode-graph function (model forward + logits + argmax) of a preset with random weights and
2 layers on CPU tensors, under a TorchDispatchMode that counts every aten op that launches a kernel on
CUDA (views, `empty` and other metadata ops excluded; a GEMM counts 1), plus every Triton launch (in
the interpreter, TRITON_INTERPRET=1). Kernels per step = fixed + per_layer * n_layers, from runs with
1 and 2 layers. Mode "reference" is the unfused PyTorch path (what ran before the fused kernels),
"triton" the path CUDA takes now; paged attention is the Triton kernel in both, as on CUDA. Host syncs (`.item()`, `.tolist()`) are counted too: a decode step
must have none to be captured in a CUDA graph.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton's first import

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from reprise_gpu.config import get_model_args  # noqa: E402
from reprise_gpu.gguf_loader import random_state_dict  # noqa: E402
from reprise_gpu.layers import ops  # noqa: E402
from reprise_gpu.models.llama import AttnMetadata, alloc_kv_cache, build_model  # noqa: E402

FREE = {"empty", "empty_like", "empty_strided", "new_empty", "detach", "alias", "lift_fresh", "sym_size",
        "sym_stride", "sym_numel", "sym_storage_offset", "is_same_size", "unsqueeze", "squeeze", "promote_types",
        "result_type"}
SYNC = {"_local_scalar_dense", "item", "equal", "is_nonzero"}


class KernelCounter(TorchDispatchMode):
    """ops: Counter of aten op names that launch a kernel (+ "triton:<kernel>"); syncs: host syncs seen."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()
        self.syncs = 0
        self.paused = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        out = func(*args, **(kwargs or {}))
        if not self.paused:
            if name in SYNC:
                self.syncs += 1
            elif func.is_view:  # `to`, `reshape`, `contiguous` may alias or copy
                if _copied(args[0], out):
                    self.ops[name] += 1
            elif name not in FREE:
                self.ops[name] += 1
        return out

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def _copied(src, out) -> bool:
    outs = out if isinstance(out, (list, tuple)) else [out]
    ptr = src.untyped_storage().data_ptr()
    return any(isinstance(o, torch.Tensor) and o.untyped_storage().data_ptr() != ptr for o in outs)


@contextlib.contextmanager
def count_triton(counter: KernelCounter):
    """Count each Triton launch once and hide the interpreter's own tensor ops from the counter."""
    from triton.runtime.interpreter import InterpretedFunction

    run = InterpretedFunction.run

    def counted(self, *args, **kwargs):
        counter.ops["triton:" + self.fn.__name__] += 1
        counter.paused += 1
        try:
            return run(self, *args, **kwargs)
        finally:
            counter.paused -= 1

    InterpretedFunction.run = counted
    try:
        yield
    finally:
        InterpretedFunction.run = run


def decode_step_fn(model, kv_cache):
    """What a decode CUDA graph runs (model_runner.ModelRunner._decode_step)."""
    def step(ids, pos, attn):
        logits = model.compute_logits(model(ids, pos, attn, kv_cache))
        return logits, logits.argmax(dim=-1)
    return step


def count_step(preset: str, n_layers: int, batch: int, mode: str, dtype=torch.bfloat16) -> KernelCounter:
    args = get_model_args(preset, n_layers=n_layers, max_seq_len=256, vocab_size=512)  # vocab: no kernel count
    model = build_model(args, random_state_dict(args, seed=0, dtype=dtype))
    block, ctx = 16, 40
    per_seq = -(-ctx // block)
    kv = alloc_kv_cache(args, batch * per_seq + 1, block, dtype, "cpu")
    tables = [[1 + b * per_seq + j for j in range(per_seq)] for b in range(batch)]
    attn = AttnMetadata.build([1] * batch, [ctx] * batch, tables, block)
    ids = torch.randint(0, args.vocab_size, (batch,), generator=torch.Generator().manual_seed(0))
    pos = torch.full((batch,), ctx - 1, dtype=torch.int64)
    step = decode_step_fn(model, kv)
    counter = KernelCounter()
    with torch.inference_mode(), ops.kernel_mode(mode), triton_attention(), count_triton(counter), counter:
        step(ids, pos, attn)
    return counter


@contextlib.contextmanager
def triton_attention():
    """Paged attention through Triton in every mode, as on CUDA (mode "reference" keeps it there too)."""
    prev = ops.use_triton_attention
    ops.use_triton_attention = lambda q: True
    try:
        yield
    finally:
        ops.use_triton_attention = prev


def count(preset: str, batch: int, mode: str) -> dict:
    one, two = count_step(preset, 1, batch, mode), count_step(preset, 2, batch, mode)
    per_layer = two.total - one.total
    layer_ops = two.ops - one.ops
    n = get_model_args(preset).n_layers
    return {"model": preset, "mode": mode, "batch": batch, "per_layer": per_layer, "fixed": one.total - per_layer,
            "n_layers": n, "per_step": one.total - per_layer + per_layer * n, "host_syncs": two.syncs,
            "layer_ops": dict(sorted(layer_ops.items())),
            "fixed_ops": dict(sorted((one.ops - layer_ops).items()))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["smollm2-135m", "llama3-8b"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--modes", nargs="+", default=["reference", "triton"], choices=ops.MODES)
    a = p.parse_args()
    for name in a.models:
        for mode in a.modes:
            print(json.dumps(count(name, a.batch, mode)), flush=True)


if __name__ == "__main__":
    main()
