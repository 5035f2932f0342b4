// The real local stack for benchmarks: wrangler dev (workerd with R2 and KV persisted to a scratch
// directory) and the GPU backend on CPU, plus what the benches need around them (the edge's chat
// template and tokenizer, local KV reads and writes, process memory).
import { execFileSync, spawn } from "node:child_process";
import { appendFileSync, readFileSync, writeFileSync } from "node:fs";
import http from "node:http";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const root = join(dirname(fileURLToPath(import.meta.url)), "..");
export const wrangler = join(root, "node_modules/.bin/wrangler");
export const PY = join(root, "gpu-backend/.venv/bin/python");
export const BUCKET = /binding\s*=\s*"BLOBS"\s*\n\s*bucket_name\s*=\s*"([^"]+)"/m.exec(readFileSync(join(root, "wrangler.toml"), "utf8"))[1];
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The stack's state lives in `dir`; dev listens on `port` (inspector on `inspector`). */
export function localStack({ dir, port, inspector }) {
  async function tokenizer() {
    const { Tokenizer } = await import(join(root, "node_modules/@huggingface/tokenizers/dist/tokenizers.mjs"));
    const tok = new Tokenizer(JSON.parse(readFileSync(join(root, ".models/hf/tokenizer.json"), "utf8")), {});
    return (s) => tok.encode(s, { add_special_tokens: false }).ids;
  }

  /** src/edge-model/chat-template.ts, same text. */
  function renderChat(messages, gen) {
    let out = "";
    messages.forEach((m, i) => {
      if (i === 0 && m.role !== "system") out += "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";
      out += `<|im_start|>${m.role}\n${m.content}<|im_end|>\n`;
    });
    return gen ? out + "<|im_start|>assistant\n" : out;
  }

  async function waitFor(url, ms, ok = (r) => r.status === 200) {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      try {
        if (ok(await fetch(url))) return;
      } catch {}
      await sleep(500);
    }
    throw new Error(`${url} not up in ${ms} ms`);
  }

  function descendants(pid) {
    const out = [];
    for (const line of execFileSync("ps", ["-e", "-o", "pid=,ppid=,comm="]).toString().trim().split("\n")) {
      const [p, pp, comm] = line.trim().split(/\s+/);
      if (Number(pp) === pid) out.push({ pid: Number(p), comm }, ...descendants(Number(p)));
    }
    return out;
  }

  function status(pid) {
    const s = readFileSync(`/proc/${pid}/status`, "utf8");
    const kb = (k) => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(s)?.[1] ?? 0) * 1024;
    return { rss: kb("VmRSS"), hwm: kb("VmHWM") };
  }

  let running = null;

  /** Stops whatever this stack still runs (call from a finally block). */
  async function cleanup() {
    if (running) await stopDev(running);
  }

  async function startDev(vars) {
    const args = ["dev", "--persist-to", dir, "--ip", "127.0.0.1", "--port", String(port), "--inspector-port", String(inspector), ...Object.entries(vars).flatMap(([k, v]) => ["--var", `${k}:${v}`])];
    const child = spawn(wrangler, args, { cwd: root, stdio: ["ignore", "pipe", "pipe"], detached: false });
    child.stdout.on("data", (d) => appendFileSync(join(dir, "dev.log"), d));
    child.stderr.on("data", (d) => appendFileSync(join(dir, "dev.log"), d));
    await waitFor(`http://127.0.0.1:${port}/v1/models`, 120_000, (r) => r.status === 401 || r.status === 200);
    const workerd = descendants(child.pid).find((p) => p.comm === "workerd");
    running = { child, workerd: workerd?.pid };
    return running;
  }

  async function stopDev(dev) {
    if (running === dev) running = null;
    if (dev.child.exitCode !== null) return;
    dev.child.kill("SIGINT");
    await new Promise((r) => dev.child.once("exit", r));
    await sleep(500);
  }

  function kvPut(key, value) {
    const f = join(dir, "kv-value.json");
    writeFileSync(f, value);
    execFileSync(wrangler, ["kv", "key", "put", key, "--path", f, "--binding", "SESSIONS", "--local", "--persist-to", dir], { cwd: root, stdio: ["ignore", "ignore", "inherit"] });
  }

  function kvGet(key) {
    return JSON.parse(execFileSync(wrangler, ["kv", "key", "get", key, "--binding", "SESSIONS", "--local", "--persist-to", dir], { cwd: root }).toString());
  }

  /** Fresh state: the edge model and tokenizer in R2, an API key (returned), a backend secret in dir/secret. */
  function bootstrap() {
    const rel = dir.slice(root.length + 1);
    execFileSync("node", [join(root, "scripts/seed_local_storage.mjs"), "--persist-to", rel], { cwd: root, stdio: ["ignore", "ignore", "inherit"] });
    const keyFile = join(dir, "api-key");
    execFileSync("node", [join(root, "scripts/create_key.mjs"), "--tenant", "bench", "--name", "bench", "--rate-limit", "0", "--save", keyFile, "--persist-to", rel], { cwd: root, stdio: ["ignore", "ignore", "inherit"] });
    writeFileSync(join(dir, "secret"), Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("hex"));
    return readFileSync(keyFile, "utf8").trim();
  }

  /** The GPU backend on CPU, logging to dir/backend.log; resolves once /readyz answers. */
  async function startBackend(backendPort, extraArgs) {
    const proc = spawn(PY, ["-m", "reprise_gpu.server", "--device", "cpu", "--port", String(backendPort), "--secret-file", join(dir, "secret"), "--tokenizer", join(root, ".models/hf/tokenizer.json"), ...extraArgs], { cwd: join(root, "gpu-backend"), stdio: ["ignore", "ignore", "pipe"] });
    proc.stderr.on("data", (d) => appendFileSync(join(dir, "backend.log"), d));
    await waitFor(`http://127.0.0.1:${backendPort}/readyz`, 900_000);
    return proc;
  }

  /** Stops a backend started here: SIGTERM, then SIGKILL if it has not exited in 10 s. */
  async function stopBackend(proc) {
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((r) => proc.once("exit", r));
    proc.kill("SIGTERM");
    if ((await Promise.race([exited.then(() => true), sleep(10_000).then(() => false)])) === false) proc.kill("SIGKILL");
  }

  /** The edge's vars for a backend on `backendPort` (and grants through this Worker when `grants`). */
  function edgeVars(backendPort, grants, extra = {}) {
    return {
      GPU_BACKEND_URL: `http://127.0.0.1:${backendPort}`, GPU_BACKEND_SECRET: readFileSync(join(dir, "secret"), "utf8"), GPU_PREFILL_THRESHOLD: "0",
      ...(grants ? { STORAGE_GRANTS: "worker", STORAGE_GRANT_ORIGIN: `http://127.0.0.1:${port}`, STORAGE_GRANT_SECRET: grantSecret } : {}),
      ...extra,
    };
  }
  const grantSecret = Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("hex");

  /** One chat completion; `ttft_s` is the time to the first byte of the body (streamed: the first token).
   * node:http rather than fetch: fetch gives up on a body silent for 300 s, and a CPU backend coding a
   * long turn's chunk can be silent longer. */
  function chat(key, body) {
    const payload = JSON.stringify({ model: "smollm2-135m-instruct", temperature: 0, max_tokens: 2, ...body });
    return new Promise((resolve, reject) => {
      const t0 = performance.now();
      const req = http.request({ host: "127.0.0.1", port, path: "/v1/chat/completions", method: "POST", headers: { authorization: `Bearer ${key}`, "content-type": "application/json", "content-length": Buffer.byteLength(payload) } }, (res) => {
        const parts = [];
        let ttft = null;
        res.on("data", (d) => {
          ttft ??= (performance.now() - t0) / 1000;
          parts.push(d);
        });
        res.on("end", () => resolve({ status: res.statusCode, body: Buffer.concat(parts).toString(), seconds: (performance.now() - t0) / 1000, ttft_s: ttft }));
        res.on("error", reject);
      });
      req.on("error", reject);
      req.end(payload);
    });
  }

  /** `GET path` with the API key, as JSON. */
  async function get(key, path) {
    return (await fetch(`http://127.0.0.1:${port}${path}`, { headers: { authorization: `Bearer ${key}` } })).json();
  }

  return { stopBackend, cleanup, chat, get, tokenizer, renderChat, waitFor, descendants, status, startDev, stopDev, kvPut, kvGet, bootstrap, startBackend, edgeVars };
}
