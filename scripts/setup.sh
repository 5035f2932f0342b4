#!/usr/bin/env bash
# Sets up a fresh clone: Node and Python environments, the model package, the edge model conversion,
# local storage seeded with the model and a local API key. Idempotent: each step skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "system tools"
# The README's examples use curl and jq, and the regression test runs them.
if ! command -v jq >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  apt-get install -y -q jq >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q jq >/dev/null)
fi

step "npm packages"
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi

step "binding types (worker-configuration.d.ts, generated from wrangler.toml, git-ignored)"
npx wrangler types >/dev/null

step "wasm: the KV codec for the edge (clang + lld for wasm32)"
if ! command -v clang >/dev/null 2>&1 || ! command -v wasm-ld >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get install -y -q clang lld >/dev/null || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q clang lld >/dev/null; }
fi
node wasm/build.mjs

step "python environment (uv, locked)"
command -v uv >/dev/null 2>&1 || python3 -m pip install -q uv
(cd gpu-backend && uv sync --all-extras --frozen -q)

step "edge model: GGUF -> HF -> ONNX int4"
gpu-backend/.venv/bin/python scripts/convert_edge_model.py --out .models

step "local storage: model into R2, a local API key"
node scripts/seed_local_storage.mjs
if [ ! -f .state/local-api-key ]; then
  node scripts/create_key.mjs --tenant local --name quickstart --save .state/local-api-key
fi
echo "setup done; local API key in .state/local-api-key"
