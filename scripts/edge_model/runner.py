"""The edge model in Python onnxruntime (CPU): the same sessions, run in the same order as the Worker.

    lm = EdgeLM(Path(".models/edge/smollm2-135m-instruct-q4h.json"))
    logits, past = lm.step(prompt_ids, lm.empty_past())
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .weights import HEAD_DIM, HIDDEN, KV_HEADS


def session_options(threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    # The Worker runs with constant folding off (it would widen the float16 d/m tensors into float32
    # initializers); the same here, so both run the same graph.
    so.add_session_config_entry("optimization.disable_specified_optimizers", "ConstantFolding")
    return so


class EdgeLM:
    def __init__(self, manifest: Path, threads: int = 1):
        import onnxruntime as ort

        self.manifest = json.loads(manifest.read_text())
        d = manifest.parent / self.manifest["dir"]
        so = session_options(threads)
        self.sess = {s["name"]: ort.InferenceSession(str(d / s["graph"]), so, providers=["CPUExecutionProvider"])
                     for s in self.manifest["sessions"]}
        self.groups = [s for s in self.manifest["sessions"] if s["name"] != "head"]

    def empty_past(self) -> list[tuple[np.ndarray, np.ndarray]]:
        z = np.zeros((0, KV_HEADS, HEAD_DIM), np.float16)
        return [(z, z) for _ in range(self.manifest["layers"])]

    def embed(self, ids: list[int]) -> np.ndarray:
        feeds = {"input_ids": np.array([ids], np.int64), "hidden": np.zeros((1, 1, HIDDEN), np.float32), "want_logits": np.array(False)}
        return self.sess["head"].run(["out"], feeds)[0]

    def logits(self, last_hidden: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": np.zeros((1, 1), np.int64), "hidden": last_hidden, "want_logits": np.array(True)}
        return self.sess["head"].run(["out"], feeds)[0][0, 0]

    def step(self, ids: list[int], past: list, chunk: int | None = None) -> tuple[np.ndarray, list]:
        """Run `ids` after `past` (per layer (K, V) float16 [P, 3, 64]); prefill `chunk` tokens at a time."""
        past = list(past)
        step = chunk or len(ids)
        for a in range(0, len(ids), step):
            part = ids[a:a + step]
            start = past[0][0].shape[0]
            x = self.embed(part)
            for s in self.groups:
                feeds = {"hidden": x, "position_ids": np.arange(start, start + len(part), dtype=np.int64)[None]}
                for i in range(s["first"], s["last"]):
                    feeds[f"past_key.{i}"], feeds[f"past_value.{i}"] = past[i][0][None], past[i][1][None]
                outs = dict(zip([o.name for o in self.sess[s["name"]].get_outputs()], self.sess[s["name"]].run(None, feeds)))
                x = outs["hidden_out"]
                for i in range(s["first"], s["last"]):
                    past[i] = (np.concatenate([past[i][0], outs[f"key.{i}"][0]]), np.concatenate([past[i][1], outs[f"value.{i}"][0]]))
        return self.logits(x[:, -1:, :]), past

    def greedy(self, prompt: list[int], n: int, eos: int, split: int | None = None, chunk: int | None = None) -> list[int]:
        past = self.empty_past()
        if split is not None:  # prefill in two pieces: [0, split) then [split, len)
            _, past = self.step(prompt[:split], past)
            prompt = prompt[split:]
        logits, past = self.step(prompt, past, chunk)
        out = []
        while True:
            out.append(int(np.argmax(logits)))
            if out[-1] == eos or len(out) == n:
                return out
            logits, past = self.step([out[-1]], past)

    def greedy_full(self, prompt: list[int], n: int, eos: int) -> list[int]:
        out = []
        while True:
            logits, _ = self.step(prompt + out, self.empty_past())
            out.append(int(np.argmax(logits)))
            if out[-1] == eos or len(out) == n:
                return out

    def teacher_forced_top1(self, prompt: list[int], target: list[int]) -> tuple[int, list[np.ndarray]]:
        """How many of `target` the model's argmax predicts when fed the target prefix, and the logits."""
        logits, past = self.step(prompt, self.empty_past())
        hits, seen = 0, []
        for j, t in enumerate(target):
            seen.append(logits)
            hits += int(np.argmax(logits)) == t
            if j + 1 < len(target):
                logits, past = self.step([t], past)
        return hits, seen
