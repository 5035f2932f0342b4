#!/usr/bin/env node
// The resume policy (src/sessions/resume-policy.ts, the same function the edge runs) against measured
// resume times: for every cell of a resume bench (model x history x storage rate, with measured
// recompute_s / raw_s / coded_s) the policy's pick from that cell's measured rates, and its regret
// against the best of the three: regret = t(pick) / min(t) - 1.
//
//   node bench/resume_policy_picks.mjs ROWS.jsonl [MORE.jsonl ...] [--gpu-summary bench/results/summary/resume-gpu.json]
//
// Rows are JSON lines as gpu-backend/bench/bench_resume.py (and bench/resume_local_bench.mjs) write them
// (or a summary .json whose `ttft` array holds the cells: bytes and compute times are then fitted from
// how each way's time moves with the storage rate):
// measurement rows {model, history_tokens, raw_bytes, coded_bytes, chunks, prefill_tokens_per_s,
// recompute_s, raw_compute_s, coded_compute_s, …} and cells {section: "ttft", model, history_tokens,
// storage_GBps, recompute_s, raw_s, coded_s}. The policy's rates for a cell: P = prefill_tokens_per_s,
// X = storage_GBps, V = raw_bytes / raw_compute_s, D = BF16 bytes / coded_compute_s, ρ = coded/raw bytes.
// Merges `ttft` (with policy_choice and regret), `policy` (worst and mean regret, cells within 10%) and
// the policy's predicted crossovers into bench/results/summary/resume.json, with the GPU side's scalars
// (decode_GBps, encode_GBps, speculator_prefill_ratio_8b_4096, restore_over_predictor_ratio, fuzz) when
// their summary file is there.
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { transform } from "esbuild";
import { mergeSummary } from "./summary.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const { values: opt, positionals } = parseArgs({
  allowPositionals: true,
  options: { "gpu-summary": { type: "string", default: join(root, "bench/results/summary/resume-gpu.json") } },
});

/** The policy module itself, compiled from its TypeScript source (it imports nothing). */
async function loadPolicy() {
  const src = readFileSync(join(root, "src/sessions/resume-policy.ts"), "utf8");
  const { code } = await transform(src, { loader: "ts", format: "esm" });
  return import("data:text/javascript;base64," + Buffer.from(code).toString("base64"));
}

const CHUNK = 4096;

function inputFor(m, gbps) {
  const H = m.history_tokens;
  const b = m.raw_bytes / H;
  const n = m.chunks ?? Math.ceil(H / CHUNK);
  const size = Math.ceil(H / n);
  const ranges = [];
  for (let s = 0; s < H; s += size) ranges.push({ tokenStart: s, tokenEnd: Math.min(H, s + size), raw: true, coded: true });
  return {
    historyTokens: H, turnTokens: m.new_tokens ?? 32, rawBytesPerToken: b, ranges, canCode: true, canSplit: false,
    rates: {
      prefillTokPerS: m.prefill_tokens_per_s, transferBytesPerS: gbps * 1e9, verifyBytesPerS: m.raw_bytes / m.raw_compute_s,
      decodeBytesPerS: (m.bf16_bytes ?? m.raw_bytes) / m.coded_compute_s, firstByteS: m.first_byte_s ?? 1e-6, codedRatio: m.coded_bytes / m.raw_bytes,
    },
  };
}

/** Storage rates (GB/s) where the policy's pick changes, scanning 0.01 .. 100 GB/s. */
function crossovers(decide, m) {
  const out = [];
  let prev = null;
  for (let e = -2; e <= 2.0001; e += 0.01) {
    const x = 10 ** e;
    const pick = decide(inputFor(m, x)).restore;
    if (prev && pick !== prev) out.push({ from: prev, to: pick, storage_GBps: +x.toFixed(3) });
    prev = pick;
  }
  return out;
}

/** JSON lines, or a summary JSON whose `ttft` array holds the cells. */
function readRows(path) {
  const text = readFileSync(path, "utf8");
  if (path.endsWith(".json")) return (JSON.parse(text).ttft ?? []).map((c) => ({ section: "ttft", ...c, file: path }));
  return text.split("\n").filter(Boolean).map((l) => ({ ...JSON.parse(l), file: path }));
}

/** Least-squares t = a + c / X over the cells of one (model, history). */
function fitLine(cells, key) {
  const xs = cells.map((c) => 1 / c.storage_GBps), ys = cells.map((c) => c[key]);
  const n = xs.length, mx = xs.reduce((a, b) => a + b, 0) / n, my = ys.reduce((a, b) => a + b, 0) / n;
  const sxx = xs.reduce((a, x) => a + (x - mx) ** 2, 0);
  const c = sxx > 0 ? xs.reduce((a, x, i) => a + (x - mx) * (ys[i] - my), 0) / sxx : 0;
  return { bytes: Math.max(c, 0) * 1e9, compute: Math.max(my - c * mx, 1e-6) };
}

/** Measurement rows for cells that came without one (a composed summary): bytes and compute times from
 * how each way's time moves with the storage rate (t = compute + bytes / rate), prefill from recompute. */
function fitted(rows) {
  const groups = new Map();
  for (const r of rows.filter((x) => x.section === "ttft")) {
    const k = `${r.file}|${r.model}|${r.history_tokens}`;
    if (!groups.has(k)) groups.set(k, []);
    groups.get(k).push(r);
  }
  return [...groups.values()].filter((g) => g.length >= 2).map((g) => {
    const raw = fitLine(g, "raw_s"), coded = fitLine(g, "coded_s"), H = g[0].history_tokens;
    return {
      file: g[0].file, model: g[0].model, history_tokens: H, chunks: Math.ceil(H / CHUNK), raw_bytes: raw.bytes, coded_bytes: coded.bytes,
      raw_compute_s: raw.compute, coded_compute_s: coded.compute, prefill_tokens_per_s: H / (g.reduce((a, c) => a + c.recompute_s, 0) / g.length), fitted: true,
    };
  });
}

async function main() {
  const { decideResume } = await loadPolicy();
  const rows = positionals.flatMap(readRows);
  const measured = new Map(rows.filter((r) => !r.section && r.history_tokens).map((r) => [`${r.file}|${r.model}|${r.history_tokens}`, r]));
  for (const m of fitted(rows)) if (!measured.has(`${m.file}|${m.model}|${m.history_tokens}`)) measured.set(`${m.file}|${m.model}|${m.history_tokens}`, m);
  const cells = [];
  for (const r of rows.filter((x) => x.section === "ttft")) {
    const m = measured.get(`${r.file}|${r.model}|${r.history_tokens}`);
    if (!m) continue;
    const d = decideResume(inputFor(m, r.storage_GBps));
    // the throttled runs (chunks streamed at the rate into the backend's verify_stream) where the bench made
    // them, else the composed bytes / rate + compute
    const t = { recompute: r.recompute_s, raw: r.raw_stream_s ?? r.raw_s, coded: r.coded_stream_s ?? r.coded_s };
    const best = Object.entries(t).sort((a, b) => a[1] - b[1])[0];
    const pick = d.restore === "split" ? "raw" : d.restore;
    cells.push({
      model: r.model, history_tokens: r.history_tokens, storage_GBps: r.storage_GBps, recompute_s: r.recompute_s, raw_s: t.raw, coded_s: t.coded,
      ...(r.raw_stream_s !== undefined ? { raw_composed_s: r.raw_s, coded_composed_s: r.coded_s, measured: "streamed" } : {}),
      policy_choice: pick, best: best[0], regret: +(t[pick] / best[1] - 1).toFixed(4),
      policy_estimates: d.estimates, source: r.path ?? r.file.split("/").slice(-2).join("/"),
    });
  }
  const ms = [...new Map([...measured.values()].map((m) => [`${m.model}|${m.history_tokens}|${m.file}`, m])).values()];
  const cross = ms.map((m) => ({ model: m.model, history_tokens: m.history_tokens, source: m.file.split("/").slice(-2).join("/"), crossovers: crossovers(decideResume, m) }));
  console.log("| model | history | GB/s | recompute_s | raw_s | coded_s | best | policy | regret |");
  console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
  for (const c of cells) console.log(`| ${c.model} | ${c.history_tokens} | ${c.storage_GBps} | ${c.recompute_s.toFixed(3)} | ${c.raw_s.toFixed(3)} | ${c.coded_s.toFixed(3)} | ${c.best} | ${c.policy_choice} | ${(100 * c.regret).toFixed(1)}% |`);
  for (const x of cross) console.log(`crossovers ${x.model} H=${x.history_tokens} (${x.source}): ${x.crossovers.map((c) => `${c.from}->${c.to} at ${c.storage_GBps} GB/s`).join(", ") || "none in 0.01-100 GB/s"}`);
  const regrets = cells.map((c) => c.regret);
  const fields = {
    ttft: cells.map(({ policy_estimates, ...c }) => c),
    policy: {
      cells: cells.length, max_regret: regrets.length ? Math.max(...regrets) : null,
      mean_regret: regrets.length ? +(regrets.reduce((a, b) => a + b, 0) / regrets.length).toFixed(4) : null,
      cells_within_10pct: cells.filter((c) => c.regret <= 0.1).length, source: "bench/resume_policy_picks.mjs",
    },
    crossovers: cross,
  };
  if (existsSync(opt["gpu-summary"])) {
    const g = JSON.parse(readFileSync(opt["gpu-summary"], "utf8"));
    fields.notes = { ttft_composed: cells.length === 0, sources: g.sources, speculator_prefill_ratio_recipe: g.speculator_prefill_ratio_recipe, encode_variant: g.encode_variant };
    for (const k of ["decode_GBps", "encode_GBps", "speculator_prefill_ratio_8b_4096", "restore_over_predictor_ratio", "fuzz", "load"]) if (g[k] !== undefined) fields[k] = g[k];
  }
  mergeSummary("resume", fields);
}

main();
