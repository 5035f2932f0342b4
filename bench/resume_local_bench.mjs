#!/usr/bin/env node
// Resume time to first token through the real local path: wrangler dev (workerd with R2), the Worker's
// policy and grants, the GPU backend on CPU fetching chunks through the Worker's signed route. Per
// history length one session is built by two real turns that store both forms (raw-bf16 and spec-v1);
// four copies of its record then resume the same next turn, one each way (RESUME_POLICY=recompute,
// raw, coded, split: the first chunk recomputed while the second loads; nothing stored). TTFT is measured at the client (first byte of the streamed reply).
//
//   node bench/resume_local_bench.mjs [--history 256,1024] [--out DIR]
//
// Writes DIR/resume.jsonl in the rows bench/resume_policy_picks.mjs reads: a measurement row per
// history (bytes, the backend's measured rates of each way) and a `ttft` cell at the storage rate this
// path measured; then run `node bench/resume_policy_picks.mjs DIR/resume.jsonl` for the picks.
import { appendFileSync, mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { localStack, root } from "./local_stack.mjs";

const { values: opt } = parseArgs({
  options: {
    history: { type: "string", default: "256,1024" },
    out: { type: "string", default: join(root, "bench/results/resume-local-cpu-2026-12-01") },
    port: { type: "string", default: "8852" },
    backend: { type: "string", default: "8857" },
  },
});
const DIR = join(root, ".state/resume-bench");
const PORT = Number(opt.port), BACKEND = Number(opt.backend);
const st = localStack({ dir: DIR, port: PORT, inspector: 9352 });
const SENTENCE = "The lighthouse keeper climbed the stairs each evening, counting the steps and the ships. ";

async function main() {
  rmSync(DIR, { recursive: true, force: true });
  mkdirSync(DIR, { recursive: true });
  mkdirSync(opt.out, { recursive: true });
  const key = st.bootstrap();
  const encode = await st.tokenizer();
  const backend = await st.startBackend(BACKEND, ["--model", "smollm2-135m", "--kv-codec", "spec-v1"]);
  const out = join(opt.out, "resume.jsonl");
  try {
    for (const H of opt.history.split(",").map(Number)) {
      // Two real turns of ~H/2 tokens each, both forms stored: two chunks, so a split has a boundary.
      const text = (n) => {
        let reps = 1;
        while (encode(SENTENCE.repeat(reps)).length < n) reps++;
        return SENTENCE.repeat(reps);
      };
      let dev = await st.startDev(st.edgeVars(BACKEND, true, { RESUME_POLICY: "raw", RESUME_STORE: "both" }));
      const sid = (await (await fetch(`http://127.0.0.1:${PORT}/v1/sessions`, { method: "POST", headers: { authorization: `Bearer ${key}` } })).json()).id;
      for (const [i, part] of [text(H / 2 - 40), text(H / 2)].entries()) {
        // Streamed; the CPU codes the chunk after the last token, and wrangler dev may cut a stream that
        // stays silent that long, while the turn itself goes on in the Worker: wait for its commit.
        const r = await st.chat(key, { session_id: sid, stream: true, max_tokens: 8, messages: [{ role: "user", content: part }] });
        if (r.status !== 200 || r.body.includes('"error"')) throw new Error(`building turn ${r.status}: ${r.body.slice(-300)}`);
        for (let t = 0; (await st.get(key, `/v1/sessions/${sid}`)).turns < i + 1; t++) {
          if (t > 600) throw new Error("building turn never committed");
          await new Promise((res) => setTimeout(res, 1000));
        }
      }
      await st.stopDev(dev);
      const rec = st.kvGet(`session:${sid}`);
      if (rec.chunks.length !== 2 || !rec.chunks.every((c) => c.alt)) throw new Error(`the session does not hold two chunks in both forms: ${JSON.stringify(rec.chunks).slice(0, 300)}`);
      const sum = (codec) => rec.chunks.reduce((n, c) => n + (c.codec === codec ? c.bytes : c.alt.bytes), 0);
      const c = { tokenEnd: rec.chunks[1].tokenEnd };
      const forms = { "raw-bf16": sum("raw-bf16"), "spec-v1": sum("spec-v1") };
      const ways = {};
      for (const way of ["recompute", "raw", "coded", "split"]) {
        st.kvPut(`session:${sid}-${way}`, JSON.stringify({ ...rec, id: `${sid}-${way}` }));
        dev = await st.startDev(st.edgeVars(BACKEND, true, { RESUME_POLICY: way, RESUME_STORE: "none" }));
        const r = await st.chat(key, { session_id: `${sid}-${way}`, stream: true, max_tokens: 4, messages: [{ role: "user", content: "Go on." }] });
        const view = await st.get(key, `/v1/sessions/${sid}-${way}`);
        await st.stopDev(dev);
        if (r.status !== 200) throw new Error(`${way} ${r.status}: ${r.body.slice(0, 300)}`);
        ways[way] = { ttft_s: r.ttft_s, last: view.resume.last };
        console.error(way, H, r.ttft_s, JSON.stringify(view.resume.last));
      }
      const raw = ways.raw.last.measured, coded = ways.coded.last.measured;
      const X = raw.fetch_bytes / Math.max(raw.fetch_s - raw.first_byte_s, 1e-6);
      const T = c.tokenEnd;
      const m = {
        bench: "resume_local", date: new Date().toISOString(), path: "local (workerd + R2 via the Worker route, backend on CPU)",
        model: "smollm2-135m", history_tokens: T, new_tokens: ways.raw.last.computedTokens, chunks: 2,
        raw_bytes: forms["raw-bf16"], coded_bytes: forms["spec-v1"], bf16_bytes: T * 30 * 2 * 3 * 64 * 2,
        recompute_s: ways.recompute.ttft_s, raw_compute_s: Math.max(ways.raw.ttft_s - raw.fetch_s, 1e-6), coded_compute_s: Math.max(ways.coded.ttft_s - coded.fetch_s, 1e-6),
        prefill_tokens_per_s: ways.recompute.last.computedTokens / ways.recompute.last.measured.prefill_s,
        split_s: ways.split.ttft_s, split_at: ways.split.last.restore === "split" ? T - ways.split.last.restoredTokens : null,
        first_byte_s: raw.first_byte_s, measured: { recompute: ways.recompute.last.measured, raw, coded },
      };
      const cell = { section: "ttft", path: "local", model: "smollm2-135m", history_tokens: T, storage_GBps: +(X / 1e9).toFixed(3), recompute_s: ways.recompute.ttft_s, raw_s: ways.raw.ttft_s, coded_s: ways.coded.ttft_s, split_s: ways.split.ttft_s };
      appendFileSync(out, JSON.stringify(m) + "\n" + JSON.stringify(cell) + "\n");
      console.log(JSON.stringify(cell));
    }
  } finally {
    await st.cleanup();
    await st.stopBackend(backend);
  }
}

main().catch((e) => {
  console.error(e, `\nbackend log: ${join(DIR, "backend.log")}`);
  process.exitCode = 1;
});
