#!/usr/bin/env node
// Requests/s and latency of `GET /v1/models`: the Reprise router vs a bare Hono worker, both under
// `wrangler dev` (workerd, local mode), loopback only, bounded in time.
//
//   node bench/router_bench.mjs [--duration 8] [--rounds 3] [--connections 10] [--out bench/results/router.md]
//
// Three targets, run one after another with the same load, in `rounds` interleaved rounds (A B C A B C …)
// so that a change in the machine's background load hits every target alike; the table gives the
// median over rounds and the range of requests/s. Total time ≈ rounds × 3 × duration + 3 × warmup.
//   bare-hono          bench/bare-hono: one route, no middleware, no bindings
//   router (no limit)  src/: bearer auth (SHA-256 + KV read), body-limit, models route; key without a rate limit
//   router             the same plus the per-key rate limit (a KV read and a KV write per request)
// Keys come from scripts/create_key.mjs in a throwaway --persist-to directory.
import autocannon from "autocannon";
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import os from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const { values } = parseArgs({
  options: {
    duration: { type: "string", default: "8" },
    rounds: { type: "string", default: "3" },
    connections: { type: "string", default: "10" },
    warmup: { type: "string", default: "3" },
    out: { type: "string", default: join(root, "bench/results/router.md") },
  },
});
const duration = Number(values.duration);
const connections = Number(values.connections);
const warmup = Number(values.warmup);
const rounds = Number(values.rounds);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const wrangler = join(root, "node_modules/.bin/wrangler");
const state = mkdtempSync(join(os.tmpdir(), "reprise-bench-"));

function createKey(args) {
  return execFileSync("node", [join(root, "scripts/create_key.mjs"), "--tenant", "bench", "--persist-to", state, ...args], {
    cwd: root,
    encoding: "utf8",
  }).trim();
}

function startDev(cwd, port, extra = []) {
  const child = spawn(wrangler, ["dev", "--ip", "127.0.0.1", "--port", String(port), "--inspector-port", String(port + 1000), "--log-level", "error", ...extra], {
    cwd,
    stdio: ["ignore", "pipe", "pipe"],
    detached: false,
  });
  let log = "";
  child.stdout.on("data", (d) => (log += d));
  child.stderr.on("data", (d) => (log += d));
  child.log = () => log;
  return child;
}

async function waitReady(url, headers, child) {
  const t0 = Date.now();
  while (Date.now() - t0 < 90_000) {
    try {
      const r = await fetch(url, { headers });
      if (r.status === 200) return;
    } catch {}
    if (child.exitCode !== null) throw new Error(`wrangler dev exited:\n${child.log()}`);
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error(`not ready: ${url}\n${child.log()}`);
}

function load(url, headers, seconds) {
  return new Promise((resolve, reject) => {
    autocannon({ url, headers, connections, duration: seconds, pipelining: 1 }, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

const targets = [];
const children = [];
let loadBefore = 0;
let loadAfter = 0;
try {
  const unlimited = createKey(["--name", "bench-unlimited", "--rate-limit", "0"]);
  const limited = createKey(["--name", "bench-limited", "--rate-limit", "1000000000"]);
  const bare = startDev(join(root, "bench/bare-hono"), 8791);
  const router = startDev(root, 8792, ["--persist-to", state]);
  children.push(bare, router);
  targets.push(
    { name: "bare-hono", url: "http://127.0.0.1:8791/v1/models", headers: {}, child: bare },
    { name: "router (auth, no rate limit)", url: "http://127.0.0.1:8792/v1/models", headers: { authorization: `Bearer ${unlimited}` }, child: router },
    { name: "router (auth + rate limit)", url: "http://127.0.0.1:8792/v1/models", headers: { authorization: `Bearer ${limited}` }, child: router },
  );
  for (const t of targets) await waitReady(t.url, t.headers, t.child);
  loadBefore = os.loadavg()[0];
  for (const t of targets) {
    await load(t.url, t.headers, warmup);
    t.runs = [];
  }
  for (let i = 0; i < rounds; i++)
    for (const t of targets) {
      const r = await load(t.url, t.headers, duration);
      t.runs.push({ rps: r.requests.average, p50: r.latency.p50, p99: r.latency.p99, non2xx: r.non2xx, errors: r.errors + r.timeouts, total: r.requests.total });
      console.log(`round ${i + 1}`, t.name, t.runs.at(-1));
    }
  loadAfter = os.loadavg()[0];
  for (const t of targets) {
    const rps = t.runs.map((r) => r.rps);
    t.result = {
      rps: median(rps),
      rpsMin: Math.min(...rps),
      rpsMax: Math.max(...rps),
      p50: median(t.runs.map((r) => r.p50)),
      p99: median(t.runs.map((r) => r.p99)),
      total: t.runs.reduce((n, r) => n + r.total, 0),
      non2xx: t.runs.reduce((n, r) => n + r.non2xx, 0),
      errors: t.runs.reduce((n, r) => n + r.errors, 0),
    };
  }
} finally {
  for (const c of children) c.kill("SIGTERM");
  rmSync(state, { recursive: true, force: true });
}

const cpu = (os.cpus()[0]?.model ?? "unknown").trim();
const cmd = `node bench/router_bench.mjs --duration ${duration} --rounds ${rounds} --connections ${connections} --warmup ${warmup}`;
const pkg = (p) => JSON.parse(readFileSync(join(root, "node_modules", p, "package.json"), "utf8")).version;
const rows = targets
  .map((t) => `| ${t.name} | ${t.result.rps.toFixed(0)} | ${t.result.rpsMin.toFixed(0)}–${t.result.rpsMax.toFixed(0)} | ${t.result.p50} | ${t.result.p99} | ${t.result.total} | ${t.result.non2xx} | ${t.result.errors} |`)
  .join("\n");
const md = `# Router overhead: \`GET /v1/models\`

- Date: ${new Date().toISOString()}
- Command: \`${cmd}\`
- Hardware: ${os.cpus().length}-core container (${cpu}), ${Math.round(os.totalmem() / 2 ** 30)} GiB RAM shared with other work; load generator and workerd on the same cores
- Runtime: wrangler ${pkg("wrangler")} \`wrangler dev\` (workerd, local mode, loopback 127.0.0.1), hono ${pkg("hono")}, autocannon ${pkg("autocannon")}, Node ${process.version}
- Load: ${connections} connections; ${warmup} s warm-up per target, then ${rounds} interleaved rounds of ${duration} s per target, one target at a time
- Background: 1-minute load average ${loadBefore.toFixed(2)} before, ${loadAfter.toFixed(2)} after (other work shares the machine; the rounds are interleaved so it falls on every target)

Median over rounds (requests/s range across rounds):

| target | requests/s | range | p50 ms | p99 ms | requests | non-2xx | errors |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
${rows}

What each target does per request: bare-hono matches the route and serialises a constant. The
router also hashes the bearer key (SHA-256) and reads its record from the SESSIONS KV (local
mode: miniflare's SQLite-backed KV behind workerd), then lists the backends' models; with the rate
limit it reads and writes a per-key counter in KV as well. Local-mode KV is not Cloudflare's
edge KV: these numbers compare the code paths on one machine, not production latency.
`;
mkdirSync(dirname(values.out), { recursive: true });
writeFileSync(values.out, md);
console.log(md);
