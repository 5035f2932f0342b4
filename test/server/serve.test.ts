// Regression test for issue #8: the server that `make serve` starts, driven the way a new user drives
// it: the official `openai` client with its default keep-alive and retries off. Before the fix, the
// request right after a non-streaming completion often failed (503 "Your worker restarted
// mid-request") or hung until the next request came (docs/design-notes.md, "Requests after a long
// completion"). Every request must get its expected status within its bound; nothing is retried.
import { execFile } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { promisify } from "node:util";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startServer } from "./server";
import type { Server } from "./server";

const PORT = Number(process.env.REPRISE_TEST_SERVE_PORT ?? 8788);
const INSPECTOR_PORT = PORT + 1441; // 8788 -> 10229: clear of a running `make serve` (9229)
const MODEL = "smollm2-135m-instruct";

/** Bounds (ms) on the 2-core CI machine, edge model on ort-web's wasm, max_tokens <= 3. */
const BOUND = {
  firstChat: 180_000, // loads the 106 MiB model into ort first
  chat: 120_000, // a ~400-token prompt takes 15-75 s here, depending on the machine's other load
  quick: 5_000, // anything that runs no model: listing models, errors, session records
  concurrentChat: 240_000, // four clients share the isolate's one thread
  // A quick request while four generations run: each of its storage round trips may wait for the
  // forward pass in flight (2-3 s each on an idle 2-core machine), so a few passes at most.
  quickUnderLoad: 20_000,
};

interface Call {
  label: string;
  expected: number;
  status: number;
  ms: number;
  bound: number;
}

let server: Server;
const calls: Call[] = [];

function client(key = server.key): OpenAI {
  return new OpenAI({ baseURL: `${server.url}/v1`, apiKey: key, maxRetries: 0, timeout: BOUND.concurrentChat });
}

/** Runs one request, recording its status (the API error's, if it throws one) and duration. */
async function call<T>(label: string, expected: number, bound: number, fn: () => Promise<T>): Promise<T | null> {
  const t0 = Date.now();
  let status: number;
  let value: T | null = null;
  try {
    value = await fn();
    status = expected < 300 ? expected : 200; // the SDK hides 2xx codes; a 2xx answer is a success
  } catch (err) {
    status = err instanceof OpenAI.APIError ? (err.status ?? -1) : -1;
    if (status === -1) console.error(label, err);
  }
  calls.push({ label, expected, status, ms: Date.now() - t0, bound });
  return value;
}

/** A prompt of ~400 tokens, different per round. */
const longPrompt = (round: number) =>
  `Round ${round}. ` + "The quick brown fox jumps over the lazy dog, and the cache keeps every turn. ".repeat(26) + "Summarize.";

type Body = OpenAI.Chat.ChatCompletionCreateParamsNonStreaming;
/** A short completion; `extra` may carry Reprise's own fields (session_id), which the SDK passes through. */
const chatBody = (content: string, extra: Record<string, unknown> = {}): Body =>
  ({ model: MODEL, max_tokens: 3, temperature: 0, messages: [{ role: "user", content }], ...extra }) as Body;

async function streamText(c: OpenAI, body: Body): Promise<string> {
  const stream = await c.chat.completions.create({ ...body, stream: true });
  let text = "";
  for await (const ch of stream) text += ch.choices[0]?.delta?.content ?? "";
  return text;
}

function expectAllAnswered(from: number) {
  const bad = calls.slice(from).filter((c) => c.status !== c.expected || c.ms > c.bound);
  const table = calls.slice(from).map((c) => `${c.label.padEnd(34)} ${c.status} (want ${c.expected}) ${c.ms} ms (bound ${c.bound})`);
  expect(bad, table.join("\n")).toEqual([]);
}

/** The JSON objects in `text`, which holds them back to back (curl -s prints no newline after a body). */
function jsonObjects(text: string): unknown[] {
  const out: unknown[] = [];
  let depth = 0, start = -1, inString = false, escaped = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (inString) {
      if (escaped) escaped = false;
      else if (ch === "\\") escaped = true;
      else if (ch === '"') inString = false;
    } else if (ch === '"') inString = true;
    else if (ch === "{") {
      if (depth++ === 0) start = i;
    } else if (ch === "}" && --depth === 0) out.push(JSON.parse(text.slice(start, i + 1)));
  }
  return out;
}

beforeAll(async () => {
  server = await startServer(PORT, INSPECTOR_PORT);
}, 180_000);

afterAll(async () => {
  await server?.stop();
  if (server) writeFileSync(".state/serve-test.log", server.log()); // the server's own output, for a failure's story
});

describe("make serve with the official openai client", () => {
  it("should answer 30+ sequential mixed requests, none failing or waiting because of an earlier one", async () => {
    const from = calls.length;
    const c = client();
    const first = await call("chat (loads the model)", 200, BOUND.firstChat, () => c.chat.completions.create(chatBody("Hi")));
    expect(first?.choices[0]?.message.content?.length).toBeGreaterThan(0);
    for (let round = 0; round < 4; round++) {
      // Each request goes out the moment the previous non-streaming completion has returned. The
      // first of each round has a long prompt (~400 tokens): before the fix its prefill held the
      // isolate for longer than workerd's 5 s keep-alive timeout, which is what broke the next request.
      const long = round < 3;
      await call(`chat #${round}${long ? " (long prompt)" : ""}`, 200, BOUND.chat, () =>
        c.chat.completions.create(chatBody(long ? longPrompt(round) : `Say a color ${round}`)),
      );
      await call(`models after chat #${round}`, 200, BOUND.quick, () => c.models.list());
      await call(`chat #${round}b`, 200, BOUND.chat, () => c.chat.completions.create(chatBody(`Name a fruit ${round}`)));
      await call(`bad temperature after chat #${round}b`, 400, BOUND.quick, () =>
        c.chat.completions.create(chatBody("x", { temperature: 5 })),
      );
      const text = await call(`stream #${round}`, 200, BOUND.chat, () => streamText(c, chatBody(`Count ${round}`)));
      expect(text?.length).toBeGreaterThan(0);
      await call(`model after stream #${round}`, 200, BOUND.quick, () => c.models.retrieve(MODEL));
    }
    await call("unknown model", 404, BOUND.quick, () => c.chat.completions.create(chatBody("x", { model: "no-such-model" })));
    await call("bad key", 401, BOUND.quick, () => client("rpk_wrong").models.list());

    // A session: later turns send only the new message and restore the earlier KV.
    const session = (await call("create session", 201, BOUND.quick, () => c.post("/sessions", { body: {} }))) as { id: string };
    const turn = (content: string) => chatBody(content, { session_id: session.id });
    await call("session turn 1", 200, BOUND.chat, () => c.chat.completions.create(turn("My name is Ada.")));
    const t2 = await call("session turn 2", 200, BOUND.chat, () => c.chat.completions.create(turn("What is my name?")));
    expect(t2?.usage?.prompt_tokens_details?.cached_tokens).toBeGreaterThan(0);
    await call("session after turn 2", 200, BOUND.quick, () => c.get(`/sessions/${session.id}`));
    await call("session turn 3 (stream)", 200, BOUND.chat, () => streamText(c, turn("Thanks!")));
    const rec = (await call("session after turn 3", 200, BOUND.quick, () => c.get(`/sessions/${session.id}`))) as { turns: number };
    expect(rec.turns).toBe(3);
    await call("unknown session", 404, BOUND.quick, () => c.chat.completions.create(chatBody("x", { session_id: "no_such_session" })));
    await call("delete session", 200, BOUND.quick, () => c.delete(`/sessions/${session.id}`));

    expect(calls.length - from).toBeGreaterThanOrEqual(30);
    expectAllAnswered(from);
  }, 1_200_000);

  it("should serve 4 clients at once and answer a quick request while they generate", async () => {
    const from = calls.length;
    let generating = true;
    const clients = [0, 1, 2, 3].map(() => client());
    const work = clients.map(async (c, i) => {
      await call(`client ${i} chat`, 200, BOUND.concurrentChat, () => c.chat.completions.create(chatBody(`Hello from client ${i}`)));
      await call(`client ${i} stream`, 200, BOUND.concurrentChat, () => streamText(c, chatBody(`Stream for client ${i}`)));
      await call(`client ${i} models`, 200, BOUND.quickUnderLoad, () => c.models.list());
    });
    const watcher = (async () => {
      const c = client();
      for (let n = 0; generating; n++) {
        await call(`models during load #${n}`, 200, BOUND.quickUnderLoad, () => c.models.list());
        await new Promise((r) => setTimeout(r, 1000));
      }
    })();
    await Promise.all(work).finally(() => (generating = false));
    await watcher;
    expect(calls.slice(from).filter((c) => c.label.startsWith("models during load")).length).toBeGreaterThan(0);
    expectAllAnswered(from);
  }, 900_000);

  it("should run the README's curl and openai examples back to back", async () => {
    const readme = readFileSync("README.md", "utf8");
    const blocks = [...readme.matchAll(/```(sh|js)\n([\s\S]*?)```/g)].map((m) => ({ lang: m[1], code: m[2]! }));
    const here = (code: string) => code.replaceAll("localhost:8787", `127.0.0.1:${PORT}`).replaceAll("http://127.0.0.1:8787", server.url);
    const curl = blocks.find((b) => b.lang === "sh" && b.code.includes("curl"))!;
    const js = blocks.find((b) => b.lang === "js" && b.code.includes("new OpenAI"))!;
    expect(curl, "README has a curl example").toBeTruthy();
    expect(js, "README has an openai example").toBeTruthy();
    const run = promisify(execFile);
    const sh = await run("bash", ["-euo", "pipefail", "-c", here(curl.code)], { timeout: 600_000, maxBuffer: 1 << 20 });
    // Every curl answer is a JSON object without an error: a completion, a session turn, the session.
    const answers = jsonObjects(sh.stdout);
    expect(answers.length, sh.stdout).toBeGreaterThanOrEqual(3);
    for (const a of answers) expect(a, JSON.stringify(a)).not.toHaveProperty("error");
    expect(answers.some((a) => (a as { object?: string }).object === "chat.completion")).toBe(true);
    const file = `.state/readme-example-${process.pid}.mjs`; // inside the repo, so `import "openai"` resolves
    writeFileSync(file, here(js.code));
    try {
      const out = await run("node", [file], { timeout: 300_000, env: { ...process.env, KEY: server.key } });
      expect(out.stdout.trim().length).toBeGreaterThan(0);
    } finally {
      rmSync(file, { force: true });
    }
  }, 900_000);
});
