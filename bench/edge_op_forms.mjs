#!/usr/bin/env node
// Op forms for the edge model's Linears, timed side by side in onnxruntime-web (the wasm build workerd
// runs, 1 thread, in Node) and onnxruntime-node (native CPU EP, 1 thread): which form could make the
// edge decode faster, and at what resident size. Graphs from bench/edge_op_forms.py (one K=576 ->
// N=1536 Linear per form); outputs are checked against the float32 form.
//
//   node bench/edge_op_forms.mjs [--reps 30]
//
// Writes bench/results/edge-op-forms-<date>/ (forms.jsonl, README.md).
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { importOrtWeb, nodeSessionOptions, webSessionOptions } from "./edge_node_runner.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const { values: opt } = parseArgs({ options: { reps: { type: "string", default: "30" } } });
const REPS = Number(opt.reps), K = 576, N = 1536;

const dir = mkdtempSync(join(os.tmpdir(), "edge-op-forms-"));
// form -> bits per weight resident, in the order bench/edge_op_forms.py lists them
const BITS = JSON.parse(execFileSync(join(root, "gpu-backend/.venv/bin/python"), [join(root, "bench/edge_op_forms.py"), dir], { encoding: "utf8" }));
const forms = Object.keys(BITS);

const { ort: web } = await importOrtWeb();
const native = (await import(join(root, "node_modules/onnxruntime-node/dist/index.js"))).default;
// the edge model's session options in each runtime (bench/edge_node_runner.mjs)
const runtimes = {
  "ort-web wasm": (ort, file) => ort.InferenceSession.create(readFileSync(file), webSessionOptions()),
  "ort-node": (ort, file) => ort.InferenceSession.create(file, nodeSessionOptions()),
};
const ortOf = { "ort-web wasm": web, "ort-node": native };

function input(ort, S) {
  const x = new Float32Array(S * K);
  for (let i = 0; i < x.length; i++) x[i] = Math.sin(i * 0.37) * 2;
  return new ort.Tensor("float32", x, [1, S, K]);
}

const rows = [];
for (const [rt, create] of Object.entries(runtimes)) {
  const ort = ortOf[rt];
  const ref = {};
  for (const form of ["f32", ...forms.filter((f) => f !== "f32")]) {
    const s = await create(ort, join(dir, `${form}.onnx`));
    for (const S of [1, 64]) {
      const feeds = { x: input(ort, S) };
      const y = (await s.run(feeds)).y.data;
      if (form === "f32") ref[S] = y;
      let err = 0, scale = 0;
      for (let i = 0; i < y.length; i++) { err = Math.max(err, Math.abs(y[i] - ref[S][i])); scale = Math.max(scale, Math.abs(ref[S][i])); }
      const reps = S === 1 ? REPS : Math.max(3, REPS / 6);
      const t0 = performance.now();
      for (let r = 0; r < reps; r++) await s.run(feeds);
      const ms = (performance.now() - t0) / reps;
      rows.push({ runtime: rt, form, S, msPerCall: ms, nsPerWeightPerToken: (ms * 1e6) / (K * N * S), bitsPerWeight: BITS[form], maxRelErrVsF32: err / scale });
    }
    await s.release();
  }
}

const date = new Date().toISOString().slice(0, 10);
const out = join(root, `bench/results/edge-op-forms-${date}`);
mkdirSync(out, { recursive: true });
writeFileSync(join(out, "forms.jsonl"), rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
const table = ["| form | bits/weight | runtime | S=1 ms/call | S=1 ns/weight | S=64 ms/call | S=64 ns/weight/token | max rel. err vs f32 |", "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"];
for (const form of forms)
  for (const rt of Object.keys(runtimes)) {
    const [a, b] = [1, 64].map((S) => rows.find((r) => r.form === form && r.runtime === rt && r.S === S));
    table.push(`| ${form} | ${BITS[form]} | ${rt} | ${a.msPerCall.toFixed(3)} | ${a.nsPerWeightPerToken.toFixed(2)} | ${b.msPerCall.toFixed(2)} | ${b.nsPerWeightPerToken.toFixed(3)} | ${a.maxRelErrVsF32.toExponential(1)} |`);
  }
const cpu = os.cpus()[0]?.model ?? "?";
writeFileSync(join(out, "README.md"), `# Edge Linear op forms: onnxruntime-web wasm vs onnxruntime-node\n\n- **Date:** ${date}\n- **Hardware:** ${os.cpus().length}x ${cpu}, Node ${process.version}, onnxruntime-web ${web.env.versions.web}, 1 thread each\n- **Command:** \`node bench/edge_op_forms.mjs --reps ${REPS}\`\n- **What:** one K=${K} -> N=${N} Linear (the edge model's gate/up shape) per form (bench/edge_op_forms.py), S new tokens per call.\n\n${table.join("\n")}\n`);
console.log(table.join("\n"));
