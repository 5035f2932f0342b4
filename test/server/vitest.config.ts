import { defineConfig } from "vitest/config";

// Tests of the real local server (`make serve`), run from Node against it over HTTP: unlike the
// workerd suite (vitest.config.ts), they go through wrangler dev's proxy and real sockets.
export default defineConfig({
  test: {
    include: ["test/server/**/*.test.ts"],
    environment: "node",
    testTimeout: 600_000,
    hookTimeout: 240_000,
    fileParallelism: false,
  },
});
