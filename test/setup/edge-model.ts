// Puts the edge model (its manifest and every file the manifest names) and its tokenizer into this
// test file's R2 bucket (storage is per test file), at the keys the Worker reads. The bytes come
// from .models/ on the host through the EDGE_FILES service binding defined in vitest.config.ts (a
// Node function: the worker cannot read host files).
//
// A setup file for every test file (it costs seconds per file: ~80 MB of R2 puts). If the model has
// not been converted, it warns and the files that generate fail with "edge model not found in R2".
import { env } from "cloudflare:workers";
import { Manifest, modelFileKey } from "../../src/edge-model/model-files";
import { tokenizerKey } from "../../src/edge-model/tokenizer";

const files = env as unknown as { EDGE_FILES: Fetcher };

async function seed(key: string, path: string): Promise<void> {
  const res = await files.EDGE_FILES.fetch(`http://edge-files${path}`);
  if (!res.ok) throw new Error(`EDGE_FILES ${path}: ${res.status} ${await res.text()}`);
  const size = Number(res.headers.get("content-length"));
  const have = await env.BLOBS.head(key);
  if (have && have.size === size) {
    await res.body?.cancel();
    return;
  }
  await env.BLOBS.put(key, await res.arrayBuffer());
}

try {
  const key = env.EDGE_MODEL_KEY;
  const manifestName = key.slice(key.lastIndexOf("/") + 1);
  await seed(key, `/edge/${manifestName}`);
  const manifest = Manifest.parse(await (await env.BLOBS.get(key))!.json());
  for (const f of manifest.files) await seed(modelFileKey(key, manifest, f.name), `/edge/${manifest.dir}/${f.name}`);
  await seed(tokenizerKey(key), "/tokenizer");
} catch (err) {
  console.warn("edge model not seeded:", err);
}
