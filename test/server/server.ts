/**
 * Starts the server that `make serve` starts (scripts/serve.sh: wrangler dev, workerd, local KV/R2 under
 * .state/) on a port of its own, and stops it with its whole process group.
 */
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";

export interface Server {
  url: string;
  key: string;
  log: () => string;
  stop: () => Promise<void>;
}

/** Waits for wrangler's "Ready on" line, then for an authenticated GET /v1/models to answer 200. */
export async function startServer(port: number, inspectorPort: number, readyTimeoutMs = 120_000): Promise<Server> {
  const child: ChildProcess = spawn("bash", ["scripts/serve.sh"], {
    env: { ...process.env, REPRISE_PORT: String(port), REPRISE_INSPECTOR_PORT: String(inspectorPort), FORCE_COLOR: "0" },
    detached: true, // its own process group: stop() ends wrangler and workerd with it
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const stop = async () => {
    if (child.exitCode === null && child.pid) process.kill(-child.pid, "SIGTERM");
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
    if (child.exitCode === null && child.pid) process.kill(-child.pid, "SIGKILL");
  };
  const url = `http://127.0.0.1:${port}`;
  const key = readFileSync(".state/local-api-key", "utf8").trim();
  const deadline = Date.now() + readyTimeoutMs;
  try {
    while (!out.includes("Ready on")) {
      if (child.exitCode !== null) throw new Error(`scripts/serve.sh exited with ${child.exitCode}`);
      if (Date.now() > deadline) throw new Error("the server did not get ready in time");
      await new Promise((r) => setTimeout(r, 200));
    }
    for (;;) {
      const res = await fetch(`${url}/v1/models`, { headers: { authorization: `Bearer ${key}` } }).catch(() => null);
      if (res?.status === 200) break;
      if (Date.now() > deadline) throw new Error(`GET /v1/models did not answer 200 in time (last: ${res?.status})`);
      await new Promise((r) => setTimeout(r, 500));
    }
  } catch (err) {
    await stop();
    throw new Error(`${(err as Error).message}\n--- server output ---\n${out.slice(-4000)}`);
  }
  return { url, key, log: () => out, stop };
}
