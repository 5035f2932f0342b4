#!/usr/bin/env node
// Where ort-web's wasm memory goes for the edge model, in Node with the same ort wasm build that
// workerd runs (bench/edge_node_runner.mjs with its workerd-like heap): heap size after each session
// loads, after the KV cache is allocated and after a light step (prompt T, NEW tokens, CHUNK prompt
// tokens per run). STAGING wasm stages each .data file in ort's heap (as onnx-session.ts does), js in
// a JS buffer. EXTRA: JSON of ort session `extra` options (e.g. {"session":{"disable_prepacking":"1"}}).
//
//   node bench/edge_memory_probe.mjs <q8h|q41h> <wasm|js> [T=512] [NEW=64] [CHUNK=64]
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { argmax, loadNodeModel } from "./edge_node_runner.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const [variant = "q8h", staging = "wasm", T = "512", NEW = "64", CHUNK = "64"] = process.argv.slice(2);
const MiB = (b) => (b / 2 ** 20).toFixed(1);
const log = [];
const m = await loadNodeModel({
  runtime: "web", manifest: join(root, `.models/edge/smollm2-135m-instruct-${variant}.json`), heap: { staging },
  extra: JSON.parse(process.env.EXTRA ?? "{}"), prefillChunk: Number(CHUNK),
  onSession: (name, bytes, heap) => log.push(`${name} (${MiB(bytes)}) -> ${MiB(heap)}`),
});
const past = m.newPast(Number(T) + Number(NEW) - 1);
log.push(`kv ${MiB(past.bytes)} at ${MiB(past.at)} -> ${MiB(m.heapBytes())}`);
let next = argmax((await m.forward(Array.from({ length: Number(T) }, (_, i) => 100 + (i % 1000)), past)).logits);
log.push(`prefill ${T} -> ${MiB(m.heapBytes())}`);
for (let n = 1; n < Number(NEW); n++) next = argmax((await m.forward([next], past)).logits);
log.push(`decode ${NEW} -> ${MiB(m.heapBytes())} MiB`);
console.log(`${variant} staging=${staging} chunk=${CHUNK} ${process.env.EXTRA ?? ""}\n  ` + log.join("\n  "));
