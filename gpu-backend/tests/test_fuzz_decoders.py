"""The decoders' fuzz harness (bench/fuzz_decoders.py) in small: its corpus decodes, and a few hundred mutated
chunks give statuses with the NumPy decoders, never a crash, a hang or other values. The long runs (GPU
decoders too, atheris) are in bench/results/fuzz-*/."""

import os
import signal
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
import fuzz_decoders as fz  # noqa: E402


@pytest.fixture()
def watchdog():
    def on_alarm(signum, frame):
        raise fz.Hang()
    old = signal.signal(signal.SIGALRM, on_alarm)
    yield 20.0
    signal.signal(signal.SIGALRM, old)


def test_corpus_is_what_the_seeds_encode_to():
    for name in fz.SEEDS:
        assert open(os.path.join(fz.CORPUS, name + ".chunk"), "rb").read() == fz.encode_seed(name)[0], name


def test_mutated_chunks_give_statuses(watchdog):
    cases = fz.load_corpus()
    stats = dict(cases=0, per_decoder={}, findings=[])
    for c in cases:
        fz.run_case(c["data"], c, fz.decoders(gpu=False), stats, watchdog)
    assert all(v["ok"] >= 2 for v in stats["per_decoder"].values())        # each version's seeds decode
    fz.hypothesis_cases(cases, fz.decoders(gpu=False), 150, stats, watchdog, seed=3)
    assert stats["cases"] == len(cases) + 150 and stats["findings"] == []
