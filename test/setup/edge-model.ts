// Puts the edge model and its tokenizer into this test file's R2 bucket (storage is per test file),
// at the keys the Worker reads. The bytes come from .models/ on the host through the EDGE_FILES
// service binding defined in vitest.config.ts (a Node function: the worker cannot read host files).
//
// Opt-in, because it costs ~5 s per file (a 107 MB R2 put): a test file that generates text starts
// with `import "./setup/edge-model";` (top-level await: seeding is done before its tests run).
import { env } from "cloudflare:workers";
import { tokenizerKey } from "../../src/edge-model/tokenizer";

const files = env as unknown as { EDGE_FILES: Fetcher };

async function seed(key: string, file: "model" | "tokenizer"): Promise<void> {
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

await seed(env.EDGE_MODEL_KEY, "model");
await seed(tokenizerKey(env.EDGE_MODEL_KEY), "tokenizer");
