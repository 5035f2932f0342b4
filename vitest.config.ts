import { cloudflareTest } from "@cloudflare/vitest-pool-workers";
import { readFileSync, statSync } from "node:fs";
import { basename } from "node:path";
import { defineConfig } from "vitest/config";

// The edge model files on the host (scripts/convert_edge_model.py); the setup file
// test/setup/edge-model.ts copies them into each test file's R2 through EDGE_FILES below.
const EDGE_MODEL_KEY = /^EDGE_MODEL_KEY\s*=\s*"([^"]+)"/m.exec(readFileSync("wrangler.toml", "utf8"))?.[1] ?? "";
const EDGE_FILES: Record<string, string> = {
  model: `.models/onnx/${basename(EDGE_MODEL_KEY)}`,
  data: `.models/onnx/${basename(EDGE_MODEL_KEY)}.data`,
  tokenizer: ".models/hf/tokenizer.json",
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
          // The storage route verifies grants with these; a test enables grant minting on the edge by
          // passing STORAGE_GRANT_ORIGIN (its SELF_ORIGIN) in the env it hands to worker.fetch.
          STORAGE_GRANTS: "worker",
          STORAGE_GRANT_SECRET: "test-grant-secret-only-the-edge-holds",
        },
        // A real HTTP socket into the worker under test, so that the GPU backend (another process) can
        // call its signed storage route; SELF_ORIGIN tells a test file its URL (a random port per file).
        unsafeDirectSockets: [{ host: "127.0.0.1", port: 0 }],
        serviceBindings: {
          SELF_ORIGIN: async (_req: Request, mf: { unsafeGetDirectURL(): Promise<URL> }) => new Response((await mf.unsafeGetDirectURL()).href),
          EDGE_FILES: async (request: Request) => {
            const path = EDGE_FILES[new URL(request.url).pathname.slice(1)];
            if (!path) return new Response("unknown file", { status: 404 });
            try {
              // HEAD answers the size alone, so that a test file whose R2 already holds the file never
              // starts a body it would have to cancel (cancelling one breaks the binding's connection).
              if (request.method === "HEAD") return new Response(null, { headers: { "content-length": String(statSync(path).size) } });
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
    include: ["test/**/*.test.ts", "src/**/*.test.ts"],
    exclude: ["test/server/**", "**/node_modules/**"], // the real-server tests run from Node: test/server/vitest.config.ts
    setupFiles: ["./test/setup/keys.ts", "./test/setup/edge-model.ts"],
    testTimeout: 60_000,
    hookTimeout: 120_000,
  },
});
