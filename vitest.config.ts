import { cloudflareTest } from "@cloudflare/vitest-pool-workers";
import { randomBytes } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { createServer } from "node:net";
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

// The webhook receiver (test/receiver/server.mjs, started by test/setup/receiver.ts in this Node
// process) listens on a free port chosen here, because the Worker's settings below must name it:
// it is the one host the SSRF rules let through (over http), and its DNS-over-HTTPS zone answers
// the SSRF tests' name lookups.
const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
process.env.REPRISE_TEST_RECEIVER_PORT ||= String(await freePort());
const RECEIVER = `http://127.0.0.1:${process.env.REPRISE_TEST_RECEIVER_PORT}`;

// Test files that never generate with the edge model (the "worker-light" project below).
const LIGHT = [
  "test/gpu-http.test.ts", "test/granted-plan.test.ts", "test/storage-grants.test.ts", "test/adapters.test.ts", "test/errors.test.ts", "test/sessions.test.ts",
];

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
          // small enough that the oversize-upload test stays cheap; the demo adapter is 2.9 MB
          ADAPTER_MAX_BYTES: "4000000",
          // The storage route verifies grants with these; a test enables grant minting on the edge by
          // passing STORAGE_GRANT_ORIGIN (its SELF_ORIGIN) in the env it hands to worker.fetch.
          STORAGE_GRANTS: "worker",
          STORAGE_GRANT_SECRET: "test-grant-secret-only-the-edge-holds",
          TEST_RECEIVER_URL: RECEIVER,
          TEST_SOAK_JOBS: process.env.REPRISE_TEST_SOAK_JOBS ?? "1000",
          // Webhooks in compressed time: ten attempts about a second apart instead of over 72 hours,
          // and a 1.5 s attempt timeout instead of 15 s (the receiver's "timeout" never answers).
          WEBHOOK_RETRY_SCHEDULE: "0,1,1,1,1,1,1,1,1,1",
          WEBHOOK_TIMEOUT_MS: "1500",
          WEBHOOK_ALLOW_HOSTS: RECEIVER.slice("http://".length),
          WEBHOOK_DNS_URL: `${RECEIVER}/dns-query`,
          WEBHOOK_SECRETS_KEY: randomBytes(32).toString("base64"),
        },
        // A real HTTP socket into the worker under test, so that the GPU backend (another process) can
        // call its signed storage route; SELF_ORIGIN tells a test file its URL (a random port per file).
        unsafeDirectSockets: [{ host: "127.0.0.1", port: 0 }],
        serviceBindings: {
          // the committed demo LoRA adapter (PEFT's files), for the adapter tests
          LORA_FILES: async (request: Request) => {
            const name = new URL(request.url).pathname.slice(1);
            if (!["adapter_config.json", "adapter_model.safetensors"].includes(name)) return new Response("no", { status: 404 });
            return new Response(readFileSync(`${process.env.REPRISE_TEST_LORA_DIR ?? "adapters/pirate"}/${name}`));
          },
          SELF_ORIGIN: async (_req: Request, mf: { unsafeGetDirectURL(): Promise<URL> }) => new Response((await mf.unsafeGetDirectURL()).href),
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
    globalSetup: ["./test/setup/receiver.ts"],
    // The real-server tests (test/server/) run from Node with their own config.
    exclude: ["test/server/**", "**/node_modules/**"],
    // Timeouts catch hangs, not slowness: the longest tests run the real edge model and the CPU GPU
    // backend on 2 cores (44 s on this machine, and CI's machine has run the suite 1.3x slower), so
    // one test failed there under the 60 s limit (which one, its log did not say; the limit is the
    // likeliest cause). 180 s leaves room and still ends a hang.
    testTimeout: 180_000,
    // Two files at a time: most of a file's time is spent waiting on another process (the CPU GPU
    // backend, the webhook receiver) or on retry timers, so two overlap well on CI's 2 cores.
    maxWorkers: 2,
    hookTimeout: 240_000,
    // Unit tests beside their modules (src/) never run the edge model, so they skip its ~5 s
    // (far more on a loaded machine) per-file copy of the weights into R2.
    projects: [
      { extends: true, test: { name: "unit", include: ["src/**/*.test.ts"], setupFiles: ["./test/setup/keys.ts"] } },
      // the wasm codecs against the shared vectors (VECTORS above) and their hostile corpora, and the
      // compact tokenizer against @huggingface/tokenizers: no model in R2
      { extends: true, test: { name: "wasm", include: ["wasm/tests/**/*.test.ts", "test/bpe.test.ts"] } },
      {
        extends: true,
        test: { name: "worker", include: ["test/**/*.test.ts"], exclude: [...LIGHT, "test/bpe.test.ts"], setupFiles: ["./test/setup/keys.ts", "./test/setup/edge-model.ts"] },
      },
      // Files that never run the edge model: the tokenizer only, not the weights per file.
      { extends: true, test: { name: "worker-light", include: LIGHT, setupFiles: ["./test/setup/keys.ts", "./test/setup/tokenizer.ts"] } },
    ],
  },
});
