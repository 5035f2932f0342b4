// Puts the edge model and its tokenizer into this test file's R2 bucket (storage is per test file),
// at the keys the Worker reads. The bytes come from .models/ on the host through the EDGE_FILES
// service binding defined in vitest.config.ts (a Node function: the worker cannot read host files).
//
// A setup file for every test file (it costs ~5 s per file, a 107 MB R2 put of the weights). If the model has not
// been converted, it warns and the files that generate fail with "edge model not found in R2".
import { env } from "cloudflare:workers";
import { modelDataKey } from "../../src/edge-model/onnx-session";
import { tokenizerKey } from "../../src/edge-model/tokenizer";

const files = env as unknown as { EDGE_FILES: Fetcher };

/**
 * EDGE_FILES.fetch, tried twice: the binding's first request after a 100 MB body sometimes fails
 * with "Network connection lost" (seen with vitest-pool-workers 0.15.1), and a second one succeeds.
 */
async function edgeFile(file: string, method: "GET" | "HEAD"): Promise<Response> {
  const url = `http://edge-files/${file}`;
  const res = await files.EDGE_FILES.fetch(url, { method }).catch(() => files.EDGE_FILES.fetch(url, { method }));
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

try {
  await seed(tokenizerKey(env.EDGE_MODEL_KEY), "tokenizer");
  await seed(env.EDGE_MODEL_KEY, "model");
  await seed(modelDataKey(env.EDGE_MODEL_KEY), "data");
} catch (err) {
  console.warn("edge model not seeded:", err);
}
