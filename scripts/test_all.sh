#!/usr/bin/env bash
# The README's test command runs this after setup: every suite, in one go.
#   1. gpu-backend (pytest, CPU): model vs HF reference, paged attention, Triton kernels under
#      TRITON_INTERPRET=1, scheduler, server, codec, speculator determinism.
#   2. the Worker (vitest inside workerd), with the real GPU backend started on CPU for the
#      dispatch tests; it exports spec-v1 chunks (speculative KV coding), so session turns that
#      resume on the GPU store and restore coded chunks through R2 (REPRISE_TEST_KV_CODEC=raw: raw).
#   3. the deployable bundle's compressed size against Workers' limit (wrangler deploy --dry-run).
#   4. the real local server (scripts/serve.sh, as `make serve` runs it) on its own port, driven by the
#      official openai client with keep-alive on and retries off (issue #8's regression test).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=gpu-backend/.venv/bin/python
status=0

echo "== gpu-backend: pytest (pytest-xdist, one worker per core)"
(cd gpu-backend && .venv/bin/python -m pytest -q -p no:cacheprovider -n "${REPRISE_PYTEST_WORKERS:-2}" tests) || status=1

echo "== starting the GPU backend on CPU for the edge dispatch tests"
mkdir -p .state
secret_file=.state/backend-secret
[ -f "$secret_file" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$secret_file"
port=${REPRISE_BACKEND_PORT:-8601}
$PY -m reprise_gpu.server --model smollm2-135m --device cpu --port "$port" \
  --secret-file "$secret_file" --tokenizer .models/hf/tokenizer.json --kv-codec "${REPRISE_TEST_KV_CODEC:-spec-v1}" \
  > .state/backend-test.log 2>&1 &
backend_pid=$!
trap 'kill $backend_pid 2>/dev/null; wait $backend_pid 2>/dev/null' EXIT
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
  kill -0 $backend_pid 2>/dev/null || { echo "backend died:"; cat .state/backend-test.log; break; }
  sleep 1
done

echo "== edge: vitest in workerd"
REPRISE_TEST_BACKEND_URL="http://127.0.0.1:$port" REPRISE_TEST_BACKEND_SECRET="$(cat "$secret_file")" \
  npx vitest run || status=1

echo "== edge: the deployable bundle (wrangler deploy --dry-run; the model weights stay in R2)"
node scripts/bundle_size.mjs || status=1

echo "== edge: the server \`make serve\` starts, driven by the openai client (test/server/)"
npx vitest run --config test/server/vitest.config.ts || status=1

exit $status
