import { cloudflareTest } from "@cloudflare/vitest-pool-workers";
import { readFileSync } from "node:fs";
import { join, normalize } from "node:path";
import { defineConfig } from "vitest/config";

// The edge model files on the host (scripts/convert_edge_model.py writes .models/edge/); the setup
// file test/setup/edge-model.ts copies them into each test file's R2 through EDGE_FILES below:
// /edge/<path> -> .models/edge/<path> (the manifest and the files it names), /tokenizer -> tokenizer.bin,
// /tokenizer.json -> the HF tokenizer.json (test/bpe.test.ts compares with @huggingface/tokenizers).
const fromDir = (dir: string, rel: string) => {
  const path = normalize(rel).replace(/^\/+/, "");
  return path.startsWith("..") ? null : join(dir, path);
};

// Tests run inside workerd with the bindings from wrangler.toml; storage is isolated per test file.
// The real GPU backend, when scripts/test_all.sh has started one, reaches the tests as bindings.
export default defineConfig({
  plugins: [
    cloudflareTest({
      wrangler: { configPath: "./wrangler.toml" },
      miniflare: {
        bindings: {
          TEST_GPU_BACKEND_URL: process.env.REPRISE_TEST_BACKEND_URL ?? "",
          TEST_GPU_BACKEND_SECRET: process.env.REPRISE_TEST_BACKEND_SECRET ?? "",
        },
        serviceBindings: {
          // vectors/<path>: the shared codec test vectors (read by pytest too), for wasm/tests.
          VECTORS: async (request: Request) => {
            const path = fromDir("vectors", decodeURIComponent(new URL(request.url).pathname));
            if (!path) return new Response("outside vectors/", { status: 400 });
            try {
              return new Response(readFileSync(path));
            } catch {
              return new Response(`${path} is missing`, { status: 404 });
            }
          },
          EDGE_FILES: async (request: Request) => {
            const name = decodeURIComponent(new URL(request.url).pathname);
            const path = name === "/tokenizer" ? ".models/edge/tokenizer.bin" : name === "/tokenizer.json" ? ".models/hf/tokenizer.json" : name.startsWith("/edge/") ? fromDir(".models/edge", name.slice(6)) : null;
            if (!path) return new Response("unknown file", { status: 404 });
            try {
              const bytes = readFileSync(path);
              return new Response(bytes, { headers: { "content-length": String(bytes.byteLength) } });
            } catch {
              return new Response(`${path} is missing: run scripts/convert_edge_model.py`, { status: 404 });
            }
          },
        },
      },
    }),
  ],
  test: {
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // The codec and tokenizer tests need no model in R2: they skip the seeding (seconds per file).
    projects: [
      {
        extends: true,
        test: { name: "worker", include: ["test/**/*.test.ts", "src/**/*.test.ts"], exclude: ["test/bpe.test.ts"], setupFiles: ["./test/setup/keys.ts", "./test/setup/edge-model.ts"] },
      },
      { extends: true, test: { name: "codec", include: ["wasm/tests/**/*.test.ts", "test/bpe.test.ts"] } },
    ],
  },
});
