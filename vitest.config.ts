import { cloudflareTest } from "@cloudflare/vitest-pool-workers";
import { defineConfig } from "vitest/config";

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
      },
    }),
  ],
  test: {
    include: ["test/**/*.test.ts", "src/**/*.test.ts"],
    setupFiles: ["./test/setup/keys.ts"],
    testTimeout: 60_000,
    hookTimeout: 120_000,
  },
});
