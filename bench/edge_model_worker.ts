// A bare Worker around EdgeBackend for bench/edge_model_bench.mjs (run by `wrangler dev` with this
// file as the entry and the project's wrangler.toml for bindings and the CompiledWasm rule).
// POST / {promptIds, maxTokens} streams one JSON line per event as it happens; the timing is done by
// the client, because a Worker's clock does not advance while it computes.
import { EdgeBackend, EDGE_MODEL_ID } from "../src/edge-model/backend";
import { loadEdgeModel, ortHeapBytes } from "../src/edge-model/onnx-session";

interface BenchEnv {
  BLOBS: R2Bucket;
  EDGE_MODEL_KEY: string;
}

export default {
  async fetch(req: Request, env: BenchEnv, ctx: ExecutionContext): Promise<Response> {
    if (new URL(req.url).pathname === "/heap") return Response.json({ ortHeapBytes: ortHeapBytes() });
    if (new URL(req.url).pathname === "/load") {
      const m = await loadEdgeModel(env.BLOBS, env.EDGE_MODEL_KEY);
      return Response.json({ producer: m.producer, modelBytes: m.modelBytes, ortHeapBytes: ortHeapBytes() });
    }
    const { promptIds, maxTokens } = (await req.json()) as { promptIds: number[]; maxTokens: number };
    const backend = new EdgeBackend(env);
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
