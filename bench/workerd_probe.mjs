// workerd for benchmarks: bundles a Worker entry with wrangler (deploy --dry-run, as CI does), serves
// it with `wrangler dev --no-bundle` and the project's wrangler.toml (bindings, the CompiledWasm rule,
// local R2 in .state), and reads the isolate's memory through the V8 inspector protocol:
// Runtime.getHeapUsage gives the JS heap (usedSize) and the backing stores of ArrayBuffers, which
// include every wasm Memory (backingStorageSize).
//
//   const w = await startWorkerd({ entry: "bench/edge_model_worker.ts", port: 8820, inspectorPort: 9320 });
//   const mem = await w.heapUsage(); ... await w.stop();
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const wrangler = join(root, "node_modules/.bin/wrangler");

/** `wrangler deploy --dry-run --outdir` of `entry`: the bundle and wrangler's size report. */
export function bundle(entry, outdir = mkdtempSync(join(os.tmpdir(), "edge-bundle-"))) {
  const log = execFileSync(wrangler, ["deploy", "--dry-run", "--outdir", outdir, entry], { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  return { outdir, log, main: join(outdir, entry.split("/").pop().replace(/\.ts$/, ".js")) };
}

export async function startWorkerd({ entry, port, inspectorPort }) {
  const b = bundle(entry);
  const args = ["dev", b.main, "--config", "wrangler.toml", "--no-bundle", "--persist-to", ".state", "--ip", "127.0.0.1", "--port", String(port), "--inspector-port", String(inspectorPort)];
  const wr = spawn(wrangler, args, { cwd: root, stdio: ["ignore", "pipe", "pipe"], detached: true });
  let log = "";
  wr.stdout.on("data", (d) => (log += d));
  wr.stderr.on("data", (d) => (log += d));
  for (let i = 0; !/Ready on/.test(log); i++) {
    if (i > 240 || wr.exitCode !== null) throw new Error("wrangler dev did not start:\n" + log);
    await new Promise((r) => setTimeout(r, 500));
  }
  const targets = await (await fetch(`http://127.0.0.1:${inspectorPort}/json`)).json();
  const ws = new WebSocket(targets[0].webSocketDebuggerUrl);
  await new Promise((res, rej) => (ws.once("open", res), ws.once("error", rej)));
  let id = 0;
  const pending = new Map();
  ws.on("message", (m) => {
    const msg = JSON.parse(m);
    if (msg.id && pending.has(msg.id)) (pending.get(msg.id)(msg), pending.delete(msg.id));
  });
  const send = (method, params = {}) =>
    new Promise((resolve, reject) => {
      const n = ++id;
      pending.set(n, (msg) => (msg.error ? reject(new Error(`${method}: ${msg.error.message}`)) : resolve(msg.result)));
      ws.send(JSON.stringify({ id: n, method, params }));
    });
  return {
    base: `http://127.0.0.1:${port}`,
    log: () => log,
    bundleLog: b.log,
    send,
    /** { usedSize, totalSize, embedderHeapUsedSize, backingStorageSize } in bytes. */
    heapUsage: () => send("Runtime.getHeapUsage"),
    async stop() {
      ws.close();
      const kill = (sig) => {
        try {
          process.kill(-wr.pid, sig); // wrangler and the workerd processes it started (its own group)
        } catch {}
      };
      kill("SIGTERM");
      await new Promise((r) => setTimeout(r, 1500));
      kill("SIGKILL");
      rmSync(b.outdir, { recursive: true, force: true });
    },
  };
}
