// Puts the edge model (its manifest and every file the manifest names) and its tokenizer into this
// test file's R2 bucket (storage is per test file), at the keys the Worker reads. The bytes come from
// .models/ on the host through the EDGE_FILES service binding defined in vitest.config.ts (a Node
// function: the worker cannot read host files).
//
// Used by the setup files edge-model.ts (every "worker" test file: seconds per file, ~97 MB of R2 puts of
// the weights) and tokenizer.ts (the "worker-light" files, which never run the edge model). If the model
// has not been converted, it warns and the files that generate fail with "edge model not found in R2".
import { env } from "cloudflare:workers";
import { Manifest, modelFileKey } from "../../src/edge-model/model-files";
import { tokenizerKey } from "../../src/edge-model/tokenizer";

const files = env as unknown as { EDGE_FILES: Fetcher };

/** `path`: /tokenizer (tokenizer.bin) or /edge/<file under .models/edge/> (vitest.config.ts). */
async function edgeFile(path: string, method: "GET" | "HEAD"): Promise<Response> {
  const res = await files.EDGE_FILES.fetch(`http://edge-files${path}`, { method });
  if (!res.ok) throw new Error(`EDGE_FILES ${path}: ${res.status} ${await res.text()}`);
  return res;
}

async function seed(key: string, file: string): Promise<void> {
  // HEAD first, so that a bucket which already holds the file never starts a body it would cancel.
  const size = Number((await edgeFile(file, "HEAD")).headers.get("content-length"));
  const have = await env.BLOBS.head(key);
  if (have && have.size === size) return;
  await env.BLOBS.put(key, await (await edgeFile(file, "GET")).arrayBuffer());
}

// The service binding sometimes fails with "Network connection lost", on a loaded machine and on
// the first request after a 100 MB body (vitest-pool-workers 0.15.1); a few tries make that a delay
// instead of a failed test file.
async function seedWithRetries(key: string, file: string): Promise<void> {
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
    const key = env.EDGE_MODEL_KEY;
    await seedWithRetries(tokenizerKey(key), "/tokenizer"); // small files first
    if (tokenizerOnly) return;
    await seedWithRetries(key, `/edge/${key.slice(key.lastIndexOf("/") + 1)}`);
    const manifest = Manifest.parse(await (await env.BLOBS.get(key))!.json());
    for (const f of manifest.files) await seedWithRetries(modelFileKey(key, manifest, f.name), `/edge/${manifest.dir}/${f.name}`);
  } catch (err) {
    console.warn("edge model not seeded:", err);
  }
}
