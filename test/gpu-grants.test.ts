// The grant path through the edge with the real GPU backend (on CPU, started by scripts/test_all.sh
// with --kv-codec spec-v1): the backend fetches a session's chunks through this worker's signed
// streaming route (a real socket, SELF_ORIGIN) and uploads its new chunk there itself. Chunk bytes
// never pass through the edge's request handling. Faults (corrupt, deleted, swapped chunks) mean a
// recompute: the same answer, counted in /metrics and in the session view.
import { env } from "cloudflare:workers";
import { beforeAll, describe, expect, it } from "vitest";
import worker from "../src/index";
import { sha256Hex } from "../src/crypto";
import type { SessionRecord } from "../src/sessions/store";
import { chunkMac, macKey } from "../src/storage/chunk-mac";
import type { MacFields } from "../src/storage/chunk-mac";
import { BASE, KEYS } from "./helpers";

const t = env as unknown as { TEST_GPU_BACKEND_URL: string; TEST_GPU_BACKEND_SECRET: string; SELF_ORIGIN: Fetcher };
const MODEL = "smollm2-135m-instruct";
const QUESTIONS = ["What is the capital of France?", "And of Germany?", "Which of the two is larger?", "Thank you!"];
const RAW = { RESUME_POLICY: "raw" };
/** Turns on the CPU backend take seconds each (the exact CPU speculator for coded ones). */
const SLOW = 300_000;
const ctx = { waitUntil() {}, passThroughOnException() {}, props: {} } as unknown as ExecutionContext;

interface Completion {
  choices: { message: { content: string } }[];
  usage: { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } };
  system_fingerprint: string;
}

let vars: Record<string, string> = {};

beforeAll(async () => {
  const origin = await (await t.SELF_ORIGIN.fetch("http://self/")).text();
  vars = { GPU_BACKEND_URL: t.TEST_GPU_BACKEND_URL, GPU_BACKEND_SECRET: t.TEST_GPU_BACKEND_SECRET, GPU_PREFILL_THRESHOLD: "0", STORAGE_GRANT_ORIGIN: origin };
});

async function call(method: string, path: string, body?: object, extra: Record<string, string> = {}) {
  const req = new Request(BASE + path, {
    method,
    headers: { authorization: `Bearer ${KEYS.unlimited}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return worker.fetch(req as Request<unknown, IncomingRequestCfProperties>, { ...env, ...vars, ...extra } as typeof env, ctx);
}

async function complete(body: object, extra: Record<string, string> = {}): Promise<Completion> {
  const res = await call("POST", "/v1/chat/completions", { model: MODEL, temperature: 0, max_tokens: 8, ...body }, extra);
  const text = await res.text();
  expect(res.status, text).toBe(200);
  return JSON.parse(text) as Completion;
}

async function newSession(): Promise<string> {
  return ((await (await call("POST", "/v1/sessions")).json()) as { id: string }).id;
}

const record = async (id: string) => (await env.SESSIONS.get<SessionRecord>(`session:${id}`, "json"))!;

/** The reply to the last question with the whole history in one session-less request: what a resumed turn must say. */
async function reference(turns: string[], upto: number, extra: Record<string, string>): Promise<string> {
  const messages = turns.slice(0, upto).flatMap((a, i) => [{ role: "user", content: QUESTIONS[i]! }, { role: "assistant", content: a }]);
  messages.push({ role: "user", content: QUESTIONS[upto]! });
  return (await complete({ messages }, extra)).choices[0]!.message.content;
}

/** Tokens a turn can restore: the stored chain inside the common prefix of the old token ids and its prompt. */
function restorable(before: SessionRecord, after: SessionRecord, promptTokens: number): number {
  const prompt = after.tokenIds.slice(0, promptTokens);
  let common = 0;
  while (common < Math.min(prompt.length, before.tokenIds.length) && prompt[common] === before.tokenIds[common]) common++;
  const limit = Math.min(common, promptTokens - 1);
  let end = 0;
  for (const c of before.chunks) if (c.tokenStart === end && c.tokenEnd <= limit) end = c.tokenEnd;
  return end;
}

/** A stored chunk with one payload byte changed, re-hashed and re-MACed with the real key: only decoding can tell. */
async function resigned(bytes: Uint8Array, key: string): Promise<Uint8Array> {
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  const hlen = view.getUint32(6, true);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(10, 10 + hlen))) as MacFields & { mac: string };
  const payload = bytes.slice(10 + hlen);
  const at = Math.floor(payload.length / 2);
  payload[at] = payload[at]! ^ 0x01;
  header.payload_sha256 = await sha256Hex(payload);
  header.mac = await chunkMac(await macKey(t.TEST_GPU_BACKEND_SECRET), key, header);
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(10 + json.length + payload.length);
  out.set(bytes.subarray(0, 6));
  new DataView(out.buffer).setUint32(6, json.length, true);
  out.set(json, 10);
  out.set(payload, 10 + json.length);
  return out;
}

describe.skipIf(!t.TEST_GPU_BACKEND_URL)("sessions on the grant path", () => {
  it("should resume from coded chunks the backend fetched and stored itself, up to an undecodable one", async () => {
    const id = await newSession();
    const coded = { RESUME_POLICY: "coded" };
    const answers: string[] = [];
    for (let i = 0; i < 3; i++) {
      const before = await record(id);
      const r = await complete({ session_id: id, messages: [{ role: "user", content: QUESTIONS[i]! }] }, coded);
      expect(r.system_fingerprint).toBe("reprise-gpu");
      const rec = await record(id);
      if (i > 0) {
        const want = restorable(before, rec, r.usage.prompt_tokens);
        expect(want).toBeGreaterThan(0);
        expect(r.usage.prompt_tokens_details.cached_tokens).toBe(want);
        expect(r.choices[0]!.message.content).toBe(await reference(answers, i, coded));
      }
      answers.push(r.choices[0]!.message.content);
      const last = rec.chunks.at(-1)!;
      expect(last.codec).toBe("spec-v1");
      expect(last.mac).toMatch(/^[0-9a-f]{64}$/);
      // The object is where the record says, with the size the backend reported.
      expect((await env.BLOBS.head(last.r2Key))?.size).toBe(last.bytes);
    }
    const view = (await (await call("GET", `/v1/sessions/${id}`)).json()) as { resume: { last: { restore: string; store: string }; counters: Record<string, number> }; chunk_codecs: string[] };
    expect(view.resume.last).toMatchObject({ restore: "coded", store: "coded" });
    expect(view.resume.counters.restore_coded).toBe(2);
    expect(view.chunk_codecs).toEqual(["spec-v1", "spec-v1", "spec-v1"]);
    const metrics = await (await call("GET", "/metrics")).text();
    expect(metrics).toMatch(/reprise_resume_decisions_total\{backend="gpu",model="smollm2-135m-instruct",restore="coded"\} [1-9]/);
    expect(metrics).toMatch(/reprise_resume_rate\{backend="gpu",model="smollm2-135m-instruct",rate="prefill_tokens_per_second"\} [0-9.]+/);

    // Turn 4 with an undecodable third chunk: intact as bytes (SHA-256 and MAC re-made with the real
    // key), wrong as KV. The first two are decoded again, the prefix ends before the third.
    const rec = await record(id);
    const victim = rec.chunks[2]!;
    const bad = await resigned(new Uint8Array(await (await env.BLOBS.get(victim.r2Key))!.arrayBuffer()), victim.r2Key);
    const mac = JSON.parse(new TextDecoder().decode(bad.subarray(10, 10 + new DataView(bad.buffer).getUint32(6, true)))).mac as string;
    await env.BLOBS.delete(victim.r2Key);
    await env.BLOBS.put(victim.r2Key, bad);
    await env.SESSIONS.put(`session:${id}`, JSON.stringify({ ...rec, chunks: [...rec.chunks.slice(0, 2), { ...victim, bytes: bad.byteLength, sha256: await sha256Hex(bad), mac }] }));
    const r = await complete({ session_id: id, messages: [{ role: "user", content: QUESTIONS[3]! }] }, coded);
    expect(r.usage.prompt_tokens_details.cached_tokens).toBe(victim.tokenStart);
    expect(r.choices[0]!.message.content).toBe(await reference(answers, 3, coded));
    const v = (await (await call("GET", `/v1/sessions/${id}`)).json()) as { resume: { last: { fallbacks: string[] } } };
    expect(v.resume.last.fallbacks).toEqual(["undecodable"]);
    expect((await record(id)).chunks.map((c) => c.tokenStart)).toEqual([0, rec.chunks[1]!.tokenStart, victim.tokenStart]);
  }, SLOW);

  it("should store raw chunks when told to, and restore them", async () => {
    const id = await newSession();
    await complete({ session_id: id, messages: [{ role: "user", content: QUESTIONS[0]! }] }, RAW);
    const before = await record(id);
    expect(before.chunks[0]!.codec).toBe("raw-bf16");
    const r = await complete({ session_id: id, messages: [{ role: "user", content: QUESTIONS[1]! }] }, RAW);
    expect(r.usage.prompt_tokens_details.cached_tokens).toBe(restorable(before, await record(id), r.usage.prompt_tokens));
    expect(r.usage.prompt_tokens_details.cached_tokens).toBeGreaterThan(0);
  }, SLOW);

  it("should recompute a corrupt, a deleted and a swapped chunk, and count each", async () => {
    // Each fault on the only chunk of a one-turn session; the second turn must recompute and say
    // what the whole history says. Greedy: every session's first answer is the same, so is the reference.
    const faults: Record<string, [string, (key: string, other: string) => Promise<void>]> = {
      corrupt: ["corrupt", async (key) => {
        const b = new Uint8Array(await (await env.BLOBS.get(key))!.arrayBuffer());
        b[b.length - 10] = b[b.length - 10]! ^ 0x40;
        await env.BLOBS.delete(key);
        await env.BLOBS.put(key, b);
      }],
      deleted: ["missing", async (key) => env.BLOBS.delete(key)],
      swapped: ["corrupt", async (key, other) => {
        const b = await (await env.BLOBS.get(other))!.arrayBuffer();
        await env.BLOBS.delete(key);
        await env.BLOBS.put(key, b);
      }],
    };
    const other = await newSession();
    await complete({ session_id: other, messages: [{ role: "user", content: QUESTIONS[1]! }] }, RAW);
    const otherKey = (await record(other)).chunks[0]!.r2Key;
    let ref: string | null = null;
    for (const [name, [reason, fault]] of Object.entries(faults)) {
      const id = await newSession();
      const first = await complete({ session_id: id, messages: [{ role: "user", content: QUESTIONS[0]! }] }, RAW);
      ref ??= await reference([first.choices[0]!.message.content], 1, RAW);
      await fault((await record(id)).chunks[0]!.r2Key, otherKey);
      const r = await complete({ session_id: id, messages: [{ role: "user", content: QUESTIONS[1]! }] }, RAW);
      expect(r.usage.prompt_tokens_details.cached_tokens, name).toBe(0);
      expect(r.choices[0]!.message.content, name).toBe(ref);
      const view = (await (await call("GET", `/v1/sessions/${id}`)).json()) as { resume: { last: { fallbacks: string[] } } };
      expect(view.resume.last.fallbacks, name).toEqual([reason]);
      // The session healed: the refused chunk left the record, the new chunk covers the whole history.
      expect((await record(id)).chunks.map((c) => c.tokenStart), name).toEqual([0]);
    }
    const metrics = await (await call("GET", "/metrics")).text();
    for (const reason of ["corrupt", "missing"]) expect(metrics).toMatch(new RegExp(`reprise_resume_fallbacks_total\\{backend="gpu",model="smollm2-135m-instruct",reason="${reason}"\\} [1-9]`));
  }, SLOW);
});
