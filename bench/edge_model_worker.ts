// A bare Worker around EdgeBackend for the edge benchmarks (bench/edge_bench.mjs, run by `wrangler dev`
// with this file as the entry and the project's wrangler.toml for bindings and the CompiledWasm rule).
//   GET  /load?model=<manifest key>   load the model; its producer, size and load time
//   GET  /heap                        wasm memory of ort and of the KV codec, in bytes
//   POST /?model=<key> {promptIds, maxTokens}   stream one JSON line per event as it happens
// Timing is done by the client: a Worker's clock does not advance while it computes.
import { EdgeBackend, EDGE_MODEL_ID } from "../src/edge-model/backend";
import { loadEdgeModel, ortHeapBytes } from "../src/edge-model/onnx-session";
import { codecWasm } from "../src/kv-codec/wasm";

interface BenchEnv {
  BLOBS: R2Bucket;
  EDGE_MODEL_KEY: string;
}

export default {
  async fetch(req: Request, env: BenchEnv, ctx: ExecutionContext): Promise<Response> {
    const url = new URL(req.url);
    const key = url.searchParams.get("model") ?? env.EDGE_MODEL_KEY;
    if (url.pathname === "/heap") return Response.json({ ortHeapBytes: ortHeapBytes(), codecHeapBytes: codecWasm().memoryBytes() });
    if (url.pathname === "/load") {
      const m = await loadEdgeModel(env.BLOBS, key);
      return Response.json({ producer: m.producer, modelBytes: m.modelBytes, loadMs: m.loadMs, ortHeapBytes: ortHeapBytes() });
    }
    const { promptIds, maxTokens } = (await req.json()) as { promptIds: number[]; maxTokens: number };
    const backend = new EdgeBackend({ BLOBS: env.BLOBS, EDGE_MODEL_KEY: key });
    const { readable, writable } = new TransformStream<Uint8Array, Uint8Array>();
    const w = writable.getWriter();
    const enc = new TextEncoder();
    ctx.waitUntil(
      (async () => {
        try {
          const req = { model: EDGE_MODEL_ID, promptIds, restored: [], sampling: { maxTokens, temperature: 0, topP: 1, stop: [] } };
          for await (const ev of backend.generate(req)) {
            const line = ev.type === "kv" ? { type: "kv", bytes: ev.chunk.byteLength } : ev;
            await w.write(enc.encode(JSON.stringify(line) + "\n"));
          }
        } catch (err) {
          await w.write(enc.encode(JSON.stringify({ type: "error", message: String(err) }) + "\n"));
        } finally {
          await w.close();
        }
      })(),
    );
    return new Response(readable, { headers: { "content-type": "application/x-ndjson" } });
  },
} satisfies ExportedHandler<BenchEnv>;
