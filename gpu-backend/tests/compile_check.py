"""Compile a bench's Triton kernels for sm_90 in a subprocess, without a GPU (shared by the kernel tests).

The subprocess runs without TRITON_INTERPRET, so Triton takes its JIT path and must fit each kernel in
the H200's registers and shared memory; `--compile-only` makes the bench print one line per kernel and
target instead of running anything.
"""

import os
import subprocess
import sys


def compile_for_sm90(bench_script: str) -> str:
    """Run bench/<bench_script> --compile-only; -> its stdout (the test counts the "sm_90" lines)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    bench = os.path.join(os.path.dirname(__file__), "..", "bench", bench_script)
    res = subprocess.run([sys.executable, bench, "--compile-only", "--dtype", "bfloat16"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout
