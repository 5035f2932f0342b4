// A bare Worker around EdgeBackend for the edge benchmarks (bench/edge_bench.mjs, run by `wrangler dev`
// with this file as the entry and the project's wrangler.toml for bindings and the CompiledWasm rule).
//   GET  /load?model=<manifest key>   load the model; its producer, size and load time
//   GET  /heap                        wasm memory of ort and of the KV codec, in bytes
//   POST /?model=<key> {promptIds, maxTokens}   stream one JSON line per event as it happens; the
//                                     turn's KV chunk is kept for /codec
//   POST /codec?reps=N                decode the kept chunk's edge-kv-v1 payload N times
//   POST /spec?reps=N&L=..&KH=..&D=..&t0=..&t1=..&fp=..  body: spec-v1 chunk ++ float32 predictions;
//                                     decode it N times with the wasm decoder
// Timing is done by the client: a Worker's clock does not advance while it computes.
import { EdgeBackend, EDGE_MODEL_ID } from "../src/edge-model/backend";
import { loadEdgeModel, ortHeapBytes } from "../src/edge-model/onnx-session";
import { decodeEdgeKv } from "../src/kv-codec/edge-kv";
import { decodeSpecV1 } from "../src/kv-codec/spec-v1";
import { codecWasm } from "../src/kv-codec/wasm";
import { decodeChunk } from "../src/sessions/chunk";

// wrangler.toml binds the Worker's Durable Objects; an entry point must export their classes.
export { RateCounter } from "../src/durable/rate-counter";
export { SessionLease } from "../src/durable/session-lease";
export { TenantStore } from "../src/durable/tenant-store";

let kept: Uint8Array | null = null;

interface BenchEnv {
  BLOBS: R2Bucket;
  EDGE_MODEL_KEY: string;
}

export default {
  async fetch(req: Request, env: BenchEnv, ctx: ExecutionContext): Promise<Response> {
    const url = new URL(req.url);
    const key = url.searchParams.get("model") ?? env.EDGE_MODEL_KEY;
    if (url.pathname === "/heap") return Response.json({ ortHeapBytes: ortHeapBytes(), codecHeapBytes: codecWasm().memoryBytes() });
    const reps = Number(url.searchParams.get("reps") ?? "1");
    if (url.pathname === "/codec") {
      const r = kept && (await decodeChunk(kept));
      if (!r || !r.ok) return new Response("no chunk kept", { status: 400 });
      const h = r.chunk.header, dims = { layers: h.layers, kvHeads: h.kv_heads, headDim: h.head_dim, tokens: h.token_end - h.token_start };
      let status = "OK";
      for (let i = 0; i < reps && status === "OK"; i++) status = decodeEdgeKv(r.chunk.payload, dims, () => {});
      return Response.json({ status, values: 2 * h.layers * dims.tokens * h.kv_heads * h.head_dim, payloadBytes: r.chunk.payload.byteLength });
    }
    if (url.pathname === "/spec") {
      const q = (k: string) => Number(url.searchParams.get(k));
      const body = new Uint8Array(await req.arrayBuffer());
      const n = 2 * q("KH") * (q("t1") - q("t0")) * q("D");
      const chunk = body.subarray(0, body.length - 4 * q("L") * n), pred = new Float32Array(body.slice(chunk.length).buffer);
      const expect = { fingerprint: url.searchParams.get("fp") ?? "", layers: q("L"), kvHeads: q("KH"), headDim: q("D"), tokenStart: q("t0"), tokenEnd: q("t1") };
      let status = "OK";
      for (let i = 0; i < reps && status === "OK"; i++) status = decodeSpecV1(chunk, { predict: (l) => pred.subarray(l * n, (l + 1) * n) }, expect).status;
      return Response.json({ status, values: q("L") * n });
    }
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
            if (ev.type === "kv") kept = ev.chunk;
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
