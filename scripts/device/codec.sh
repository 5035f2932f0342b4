#!/usr/bin/env bash
# KV codec runs on the lent H200 (issue #9, GPU half; see docs/gpu-runs.md for the staging). One section
# per call, each step time-boxed and logged under $OUT, a short table last.
#   coder   : CUDA tests of the spec-v2 GPU coder against the NumPy reference, then coder throughput
#   stage-a : keep the GGUF's first half; synthetic 8B-shape studies (predictor cost, resume, load)
#   stage-b : join the GGUF; SmolLM2 studies (real KV both ways, bits vs cost, resume)
set -uo pipefail
section=$1; shift
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if [ -d ../.whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ../.whl/*.whl
fi
export PYTHONPATH=/tmp/site:/root/pkgs:$PWD/gpu-backend
cd gpu-backend
step() {  # step NAME TIMEOUT CMD...
  local name=$1 t=$2; shift 2
  echo "== $name"; local s=$(date +%s)
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  echo "   rc=$rc  $(( $(date +%s) - s ))s"; tail -n "${TAIL:-25}" "$OUT/$name.log"
}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
case "$section" in
  coder)
    TAIL=8 step codec-cuda-tests 200 python3 -m pytest -q -p no:cacheprovider tests/test_codec_gpu.py \
      tests/test_codec_vectors.py tests/test_codec_decode_torch.py
    TAIL=60 step coder 420 python3 bench/bench_coder.py --out "$OUT" --variants "$@" ;;
  *) echo "unknown section $section" ;;
esac
