#!/usr/bin/env bash
# Serves the API on http://localhost:8787 in workerd (wrangler dev), KV and R2 persisted under .state/.
# With REPRISE_GPU_BACKEND=1 it also starts the GPU backend (on CPU here) and routes heavy steps to it;
# REPRISE_KV_CODEC=spec-v1 makes that backend code its session chunks speculatively (3x smaller), and
# REPRISE_GPU_PREFILL_THRESHOLD=0 sends every step there (default: prompts over 512 new tokens).
# REPRISE_PORT (default 8787) and REPRISE_INSPECTOR_PORT (default 9229) move the server, e.g. for the
# regression test (test/server/) beside a running `make serve`.
# REPRISE_WEBHOOK_ALLOW_HOSTS=127.0.0.1:9000 lets webhooks reach a local receiver (docs/webhooks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
vars=()
# The key that encrypts webhook secrets at rest (a Worker secret in production): one per checkout.
mkdir -p .state
[ -f .state/webhook-secrets-key ] || head -c 32 /dev/urandom | base64 > .state/webhook-secrets-key
vars+=(--var "WEBHOOK_SECRETS_KEY:$(cat .state/webhook-secrets-key)")
if [ "${REPRISE_GPU_BACKEND:-0}" = 1 ]; then
  secret_file=.state/backend-secret
  [ -f "$secret_file" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$secret_file"
  gpu-backend/.venv/bin/python -m reprise_gpu.server --model smollm2-135m --device "${REPRISE_DEVICE:-cpu}" \
    --port 8600 --secret-file "$secret_file" --tokenizer .models/hf/tokenizer.json \
    --kv-codec "${REPRISE_KV_CODEC:-raw}" &
  trap 'kill $! 2>/dev/null' EXIT
  vars+=(--var "GPU_BACKEND_URL:http://127.0.0.1:8600" --var "GPU_BACKEND_SECRET:$(cat "$secret_file")")
  # The backend reads and writes session chunks itself through grants on this Worker's signed route
  # (docs/storage-grants.md); the grant key stays with the edge.
  grant_file=.state/grant-secret
  [ -f "$grant_file" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$grant_file"
  vars+=(--var "STORAGE_GRANTS:worker" --var "STORAGE_GRANT_ORIGIN:http://127.0.0.1:${REPRISE_PORT:-8787}" --var "STORAGE_GRANT_SECRET:$(cat "$grant_file")")
  if [ -n "${REPRISE_GPU_PREFILL_THRESHOLD:-}" ]; then
    vars+=(--var "GPU_PREFILL_THRESHOLD:$REPRISE_GPU_PREFILL_THRESHOLD")
  fi
fi
if [ -n "${REPRISE_WEBHOOK_ALLOW_HOSTS:-}" ]; then
  vars+=(--var "WEBHOOK_ALLOW_HOSTS:$REPRISE_WEBHOOK_ALLOW_HOSTS")
fi
echo "API key: $(cat .state/local-api-key 2>/dev/null || echo 'run node scripts/create_key.mjs')"
npx wrangler dev --persist-to .state --ip 127.0.0.1 --port "${REPRISE_PORT:-8787}" \
  --inspector-port "${REPRISE_INSPECTOR_PORT:-9229}" "${vars[@]}"
