// End-to-end chat completions on the real edge model (onnxruntime-web in workerd).
// Loading the model takes seconds per test file, so every test that generates lives here.
import { SELF } from "cloudflare:test";
import { env } from "cloudflare:workers";
import OpenAI from "openai";
import { beforeAll, describe, expect, it } from "vitest";
import { tokenizerKey } from "../src/edge-model/tokenizer";
import worker from "../src/index";
import { api, BASE, errorOf, KEYS, r2Keys } from "./helpers";

const MODEL = "smollm2-135m-instruct";
const Q1 = "What is the capital of France?";
const Q2 = "And what is the capital of Germany?";

interface Completion {
  choices: { message: { role: string; content: string }; finish_reason: string }[];
  usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number; prompt_tokens_details: { cached_tokens: number } };
}

async function complete(body: object, key: string = KEYS.unlimited): Promise<Completion> {
  const res = await api("/v1/chat/completions", { body: { model: MODEL, temperature: 0, max_tokens: 24, ...body }, key });
  const text = await res.text();
  expect(res.status, text).toBe(200);
  return JSON.parse(text) as Completion;
}

/** Completions that several tests compare against, generated once (greedy, so deterministic). */
const memo = new Map<string, Promise<Completion>>();
function completeOnce(body: object): Promise<Completion> {
  const k = JSON.stringify(body);
  if (!memo.has(k)) memo.set(k, complete(body));
  return memo.get(k)!;
}

async function newSession(): Promise<string> {
  const res = await api("/v1/sessions", { method: "POST", key: KEYS.unlimited });
  return ((await res.json()) as { id: string }).id;
}

/** Parses an SSE body into its `data:` payloads. */
function sseData(text: string): string[] {
  expect(text.endsWith("\n\n")).toBe(true);
  return text
    .split("\n\n")
    .filter(Boolean)
    .map((ev) => {
      expect(ev.startsWith("data: ")).toBe(true);
      return ev.slice("data: ".length);
    });
}

beforeAll(async () => {
  // Warm the model once so the first test's timing is not the load.
  await complete({ messages: [{ role: "user", content: "Hi" }], max_tokens: 1 });
}, 180_000);

describe("POST /v1/chat/completions", () => {
  describe("non-streaming", () => {
    it("should return a chat.completion with usage", async () => {
      const r = await completeOnce({ messages: [{ role: "user", content: Q1 }] });
      expect(r).toMatchObject({ object: "chat.completion", model: MODEL });
      expect(r.choices[0]!.message.role).toBe("assistant");
      expect(r.choices[0]!.message.content).toContain("Paris");
      expect(r.choices[0]!.finish_reason).toBe("stop");
      expect(r.usage.prompt_tokens).toBeGreaterThan(10);
      expect(r.usage.completion_tokens).toBeGreaterThan(0);
      expect(r.usage.total_tokens).toBe(r.usage.prompt_tokens + r.usage.completion_tokens);
      expect(r.usage.prompt_tokens_details.cached_tokens).toBe(0);
    });

    it("should stop at max_tokens with finish_reason length", async () => {
      const r = await complete({ messages: [{ role: "user", content: "Count from one to fifty in words." }], max_tokens: 3 });
      expect(r.choices[0]!.finish_reason).toBe("length");
      expect(r.usage.completion_tokens).toBe(3);
    });
  });

  describe("streaming", () => {
    it("should stream chat.completion.chunk events, a usage chunk and [DONE]", async () => {
      const res = await api("/v1/chat/completions", {
        key: KEYS.unlimited,
        body: { model: MODEL, temperature: 0, max_tokens: 24, stream: true, stream_options: { include_usage: true }, messages: [{ role: "user", content: Q1 }] },
      });
      expect(res.status).toBe(200);
      expect(res.headers.get("content-type")).toMatch(/^text\/event-stream/);
      const data = sseData(await res.text());
      expect(data.at(-1)).toBe("[DONE]");
      const chunks = data.slice(0, -1).map((d) => JSON.parse(d));
      const ids = new Set(chunks.map((c) => c.id));
      expect(ids.size).toBe(1);
      for (const c of chunks) expect(c.object).toBe("chat.completion.chunk");
      expect(chunks[0].choices[0].delta).toEqual({ role: "assistant", content: "" });
      const usageChunk = chunks.at(-1);
      expect(usageChunk.choices).toEqual([]);
      expect(usageChunk.usage.completion_tokens).toBeGreaterThan(0);
      const finish = chunks.at(-2);
      expect(finish.choices[0]).toMatchObject({ delta: {}, finish_reason: "stop" });
      // Every other chunk carries usage: null when include_usage is set.
      for (const c of chunks.slice(0, -1)) expect(c.usage).toBeNull();
      const text = chunks.slice(1, -2).map((c) => c.choices[0].delta.content).join("");
      const whole = await completeOnce({ messages: [{ role: "user", content: Q1 }] });
      expect(text).toBe(whole.choices[0]!.message.content);
    });

    it("should send no usage chunk without include_usage", async () => {
      const res = await api("/v1/chat/completions", {
        key: KEYS.unlimited,
        body: { model: MODEL, temperature: 0, max_tokens: 4, stream: true, messages: [{ role: "user", content: Q1 }] },
      });
      const data = sseData(await res.text());
      expect(data.at(-1)).toBe("[DONE]");
      for (const d of data.slice(0, -1)) {
        const c = JSON.parse(d);
        expect(c.choices).toHaveLength(1);
        expect("usage" in c).toBe(false);
      }
    });
  });

  describe("the official openai client", () => {
    const client = new OpenAI({
      apiKey: KEYS.unlimited,
      baseURL: `${BASE}/v1`,
      fetch: (url: RequestInfo | URL, init?: RequestInit) => SELF.fetch(url.toString(), init),
      maxRetries: 0,
    });

    it("should do a non-streaming completion", async () => {
      const r = await client.chat.completions.create({ model: MODEL, temperature: 0, max_tokens: 24, messages: [{ role: "user", content: Q1 }] });
      expect(r.object).toBe("chat.completion");
      expect(r.choices[0]!.message.content).toContain("Paris");
      expect(r.usage?.prompt_tokens_details?.cached_tokens).toBe(0);
    });

    it("should do a streaming completion with usage", async () => {
      const stream = await client.chat.completions.create({
        model: MODEL,
        temperature: 0,
        max_tokens: 24,
        stream: true,
        stream_options: { include_usage: true },
        messages: [{ role: "user", content: Q1 }],
      });
      let text = "";
      let usage: OpenAI.CompletionUsage | null | undefined;
      for await (const chunk of stream) {
        text += chunk.choices[0]?.delta.content ?? "";
        if (chunk.usage) usage = chunk.usage;
      }
      expect(text).toContain("Paris");
      expect(usage?.completion_tokens).toBeGreaterThan(0);
    });

    it("should surface errors as APIError with OpenAI's fields", async () => {
      const err = await client.chat.completions
        .create({ model: MODEL, messages: [{ role: "user", content: Q1 }], temperature: 5 })
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OpenAI.BadRequestError);
      expect((err as InstanceType<typeof OpenAI.BadRequestError>).param).toBe("temperature");
    });
  });
});

describe("sessions on the edge model", () => {
  it("should resume a session: the second turn is cached and equals the full-history answer", async () => {
    const id = await newSession();
    const t1 = await complete({ session_id: id, messages: [{ role: "user", content: Q1 }] });
    expect(t1.usage.prompt_tokens_details.cached_tokens).toBe(0);
    const a1 = t1.choices[0]!.message.content;
    const t2 = await complete({ session_id: id, messages: [{ role: "user", content: Q2 }] });
    expect(t2.usage.prompt_tokens_details.cached_tokens).toBeGreaterThan(0);
    const full = await completeOnce({
      messages: [
        { role: "user", content: Q1 },
        { role: "assistant", content: a1 },
        { role: "user", content: Q2 },
      ],
    });
    expect(full.usage.prompt_tokens_details.cached_tokens).toBe(0);
    expect(t2.usage.prompt_tokens).toBe(full.usage.prompt_tokens);
    expect(t2.choices[0]!.message.content).toBe(full.choices[0]!.message.content);

    const view = (await (await api(`/v1/sessions/${id}`, { key: KEYS.unlimited })).json()) as Record<string, unknown>;
    expect(view).toMatchObject({ turns: 2, chunks: 2 });
    expect(view.tokens).toBeGreaterThan(t2.usage.prompt_tokens);
    expect(view.stored_bytes).toBeGreaterThan(0);
    expect(await r2Keys(`sessions/${id}/`)).toEqual([`sessions/${id}/0.kv`, `sessions/${id}/1.kv`]);

    const del = await api(`/v1/sessions/${id}`, { method: "DELETE", key: KEYS.unlimited });
    expect(del.status).toBe(200);
    expect(await r2Keys(`sessions/${id}/`)).toEqual([]);
  });

  describe("damaged chunks are recomputed, never trusted", () => {
    async function twoTurns() {
      const id = await newSession();
      const t1 = await complete({ session_id: id, messages: [{ role: "user", content: Q1 }] });
      return { id, a1: t1.choices[0]!.message.content };
    }
    async function fullAnswer(a1: string) {
      const full = await completeOnce({
        messages: [
          { role: "user", content: Q1 },
          { role: "assistant", content: a1 },
          { role: "user", content: Q2 },
        ],
      });
      return full.choices[0]!.message.content;
    }
    const damages: [string, (id: string) => Promise<void>][] = [
      ["missing", async (id) => env.BLOBS.delete(`sessions/${id}/0.kv`)],
      [
        "one flipped byte",
        async (id) => {
          const obj = await env.BLOBS.get(`sessions/${id}/0.kv`);
          const bytes = new Uint8Array(await obj!.arrayBuffer());
          bytes[bytes.length - 7]! ^= 0x40;
          await env.BLOBS.put(`sessions/${id}/0.kv`, bytes);
        },
      ],
      [
        "truncated",
        async (id) => {
          const obj = await env.BLOBS.get(`sessions/${id}/0.kv`);
          await env.BLOBS.put(`sessions/${id}/0.kv`, (await obj!.arrayBuffer()).slice(0, 100));
        },
      ],
      [
        "foreign producer in the record",
        async (id) => {
          const rec = (await env.SESSIONS.get(`session:${id}`, "json")) as { chunks: { producer: string }[] };
          rec.chunks[0]!.producer = "someone-else";
          await env.SESSIONS.put(`session:${id}`, JSON.stringify(rec));
        },
      ],
    ];
    for (const [name, damage] of damages)
      it(`should answer correctly with chunk 0 ${name}`, async () => {
        const { id, a1 } = await twoTurns();
        await damage(id);
        const t2 = await complete({ session_id: id, messages: [{ role: "user", content: Q2 }] });
        expect(t2.usage.prompt_tokens_details.cached_tokens).toBe(0);
        expect(t2.choices[0]!.message.content).toBe(await fullAnswer(a1));
        // The turn still committed, with a fresh chunk covering the whole conversation.
        const view = (await (await api(`/v1/sessions/${id}`, { key: KEYS.unlimited })).json()) as Record<string, unknown>;
        expect(view).toMatchObject({ turns: 2, chunks: 1 });
      });
  });

  it("should answer 409 session_busy to a turn while another is in flight, and lose neither", async () => {
    const id = await newSession();
    const first = await api("/v1/chat/completions", {
      key: KEYS.unlimited,
      body: { model: MODEL, temperature: 0, max_tokens: 16, stream: true, session_id: id, messages: [{ role: "user", content: Q1 }] },
    });
    expect(first.status).toBe(200); // streaming: the lease is held until the stream ends
    const second = await api("/v1/chat/completions", {
      key: KEYS.unlimited,
      body: { model: MODEL, temperature: 0, max_tokens: 16, session_id: id, messages: [{ role: "user", content: Q2 }] },
    });
    expect(await errorOf(second)).toMatchObject({ status: 409, code: "session_busy", param: "session_id" });
    expect(sseData(await first.text()).at(-1)).toBe("[DONE]");
    // After the first turn ends, the retried turn goes through and both are in the transcript.
    const retry = await complete({ session_id: id, messages: [{ role: "user", content: Q2 }] });
    expect(retry.usage.prompt_tokens_details.cached_tokens).toBeGreaterThan(0);
    const view = (await (await api(`/v1/sessions/${id}`, { key: KEYS.unlimited })).json()) as { turns: number; messages: { content: string }[] };
    expect(view.turns).toBe(2);
    expect(view.messages.map((m) => m.content)).toContain(Q2);
  });
});

describe("dispatch and 503 when nothing can serve", () => {
  const call = (envOverride: Record<string, string>, body: object = {}) =>
    worker.fetch(
      new Request(`${BASE}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${KEYS.unlimited}`, "content-type": "application/json" },
        body: JSON.stringify({ model: MODEL, temperature: 0, max_tokens: 2, messages: [{ role: "user", content: Q1 }], ...body }),
      }),
      { ...env, ...envOverride } as typeof env,
      { waitUntil() {}, passThroughOnException() {}, props: {} } as unknown as ExecutionContext,
    );

  it("should answer 503 backend_unavailable when the edge model cannot load and there is no GPU", async () => {
    // The tokenizer is there, the model file is not: the edge backend fails when it loads.
    const tok = await env.BLOBS.get(tokenizerKey(env.EDGE_MODEL_KEY));
    await env.BLOBS.put(tokenizerKey("models/missing.onnx"), await tok!.arrayBuffer());
    const res = await call({ EDGE_MODEL_KEY: "models/missing.onnx", GPU_BACKEND_URL: "" });
    expect(res.headers.get("retry-after")).toBeTruthy();
    expect(await errorOf(res)).toMatchObject({ status: 503, type: "server_error", code: "backend_unavailable" });
  });

  it("should answer 503 when the tokenizer cannot be read", async () => {
    const e = await errorOf(await call({ EDGE_MODEL_KEY: "models/nothing-here.onnx", GPU_BACKEND_URL: "" }));
    expect(e).toMatchObject({ status: 503, code: "backend_unavailable" });
  });

  it("should answer 503 for a GPU-only model when the GPU backend is unreachable", async () => {
    const e = await errorOf(
      await call(
        { GPU_BACKEND_URL: "http://127.0.0.1:9", GPU_BACKEND_SECRET: "s", GPU_BACKEND_MODELS: "gpu-only=smollm2-135m" },
        { model: "gpu-only" },
      ),
    );
    expect(e).toMatchObject({ status: 503, code: "backend_unavailable" });
  });

  it("should fall back to the edge model when a heavy step's GPU backend is unreachable", async () => {
    const res = await call({ GPU_BACKEND_URL: "http://127.0.0.1:9", GPU_BACKEND_SECRET: "s", GPU_PREFILL_THRESHOLD: "0" });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { system_fingerprint: string; usage: { completion_tokens: number } };
    expect(body.system_fingerprint).toBe("reprise-edge");
    expect(body.usage.completion_tokens).toBe(2);
  });
});
