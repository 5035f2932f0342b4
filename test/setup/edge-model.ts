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

async function seed(key: string, file: "model" | "data" | "tokenizer"): Promise<void> {
  const res = await files.EDGE_FILES.fetch(`http://edge-files/${file}`);
  if (!res.ok) throw new Error(`EDGE_FILES ${file}: ${res.status} ${await res.text()}`);
  const size = Number(res.headers.get("content-length"));
  const have = await env.BLOBS.head(key);
  if (have && have.size === size) {
    await res.body?.cancel();
    return;
  }
  await env.BLOBS.put(key, await res.arrayBuffer());
}

// The tokenizer first and each file on its own: every backend needs the tokenizer (the edge tokenizes
// for the GPU backend too), so a failed 107 MB weights put must not leave it out.
for (const [key, file] of [
  [tokenizerKey(env.EDGE_MODEL_KEY), "tokenizer"],
  [env.EDGE_MODEL_KEY, "model"],
  [modelDataKey(env.EDGE_MODEL_KEY), "data"],
] as const) {
  try {
    await seed(key, file);
  } catch (err) {
    console.warn(`edge model file ${file} not seeded:`, err);
  }
}
