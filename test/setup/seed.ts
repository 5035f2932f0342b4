// Puts the edge model and its tokenizer into this test file's R2 bucket (storage is per test file),
// at the keys the Worker reads. The bytes come from .models/ on the host through the EDGE_FILES
// service binding defined in vitest.config.ts (a Node function: the worker cannot read host files).
//
// Used by the setup files edge-model.ts (every "worker" test file: ~5-20 s per file, a 107 MB R2 put of
// the weights) and tokenizer.ts (the "worker-light" files, which never run the edge model). If the model
// has not been converted, it warns and the files that generate fail with "edge model not found in R2".
import { env } from "cloudflare:workers";
import { modelDataKey } from "../../src/edge-model/onnx-session";
import { tokenizerKey } from "../../src/edge-model/tokenizer";

const files = env as unknown as { EDGE_FILES: Fetcher };

async function edgeFile(file: string, method: "GET" | "HEAD"): Promise<Response> {
  const res = await files.EDGE_FILES.fetch(`http://edge-files/${file}`, { method });
  if (!res.ok) throw new Error(`EDGE_FILES ${file}: ${res.status} ${await res.text()}`);
  return res;
}

async function seed(key: string, file: "model" | "data" | "tokenizer"): Promise<void> {
  // HEAD first, so that a bucket which already holds the file never starts a body it would cancel.
  const size = Number((await edgeFile(file, "HEAD")).headers.get("content-length"));
  const have = await env.BLOBS.head(key);
  if (have && have.size === size) return;
  await env.BLOBS.put(key, await (await edgeFile(file, "GET")).arrayBuffer());
}

// The service binding sometimes fails with "Network connection lost", on a loaded machine and on
// the first request after a 100 MB body (vitest-pool-workers 0.15.1); a few tries make that a delay
// instead of a failed test file.
async function seedWithRetries(key: string, file: "model" | "data" | "tokenizer"): Promise<void> {
  for (let i = 1; ; i++) {
    try {
      return await seed(key, file);
    } catch (err) {
      if (i >= 4) throw err;
      console.warn(`edge model ${file}: try ${i} failed (${err}); retrying`);
      await new Promise((r) => setTimeout(r, 500 * i));
    }
  }
}

/** Seeds the tokenizer, and the model's weights too unless `tokenizerOnly` (test/setup/tokenizer.ts). */
export async function seedEdgeModel(tokenizerOnly = false): Promise<void> {
  try {
    await seedWithRetries(tokenizerKey(env.EDGE_MODEL_KEY), "tokenizer"); // small files first
    if (tokenizerOnly) return;
    await seedWithRetries(env.EDGE_MODEL_KEY, "model");
    await seedWithRetries(modelDataKey(env.EDGE_MODEL_KEY), "data");
  } catch (err) {
    console.warn("edge model not seeded:", err);
  }
}
