// A LoRA adapter served on the real GPU backend (started on CPU by scripts/test_all.sh): the demo
// pirate adapter, uploaded through the Worker, answers as a pirate where the base model does not;
// streamed or not, in a session or not, and listed in GET /v1/models. Skipped without a backend.
import { env } from "cloudflare:workers";
import { beforeAll, describe, expect, it, vi } from "vitest";
import worker from "../src/index";
import { BASE, KEYS } from "./helpers";

const t = env as unknown as { TEST_GPU_BACKEND_URL: string; TEST_GPU_BACKEND_SECRET: string; LORA_FILES: Fetcher };
const ctx = { waitUntil() {}, passThroughOnException() {}, props: {} } as unknown as ExecutionContext;
const vars = () => ({ ...env, GPU_BACKEND_URL: t.TEST_GPU_BACKEND_URL, GPU_BACKEND_SECRET: t.TEST_GPU_BACKEND_SECRET }) as typeof env;
const MODEL = "smollm2-135m-instruct:pirate";
const Q = [{ role: "user", content: "What is the capital of France?" }];

function call(path: string, init: { method?: string; body?: BodyInit; json?: object } = {}, extra: Record<string, string> = {}) {
  const headers: Record<string, string> = { authorization: `Bearer ${KEYS.unlimited}` };
  if (init.json) headers["content-type"] = "application/json";
  const req = new Request(BASE + path, { method: init.method ?? (init.body || init.json ? "POST" : "GET"), headers,
    body: init.json ? JSON.stringify(init.json) : init.body });
  return worker.fetch(req as Request<unknown, IncomingRequestCfProperties>, { ...vars(), ...extra } as typeof env, ctx);
}

/** Turns grant minting on: the backend then fetches adapters and session chunks through this worker's storage route. */
const grantsOn = async () => ({ STORAGE_GRANT_ORIGIN: await (await (env as unknown as { SELF_ORIGIN: Fetcher }).SELF_ORIGIN.fetch("http://self/")).text() });

async function complete(body: object, extra: Record<string, string> = {}) {
  const res = await call("/v1/chat/completions", { json: { temperature: 0, max_tokens: 16, ...body } }, extra);
  const text = await res.text();
  expect(res.status, text).toBe(200);
  return JSON.parse(text) as { model: string; system_fingerprint: string; choices: { message: { content: string } }[] };
}

describe.skipIf(!t.TEST_GPU_BACKEND_URL)("LoRA adapters on the GPU backend", () => {
  beforeAll(async () => {
    const form = new FormData();
    for (const [field, file] of [["adapter_config", "adapter_config.json"], ["adapter_model", "adapter_model.safetensors"]] as const)
      form.append(field, new Blob([await (await t.LORA_FILES.fetch(`http://files/${file}`)).arrayBuffer()]), file);
    form.append("name", "pirate");
    const res = await call("/v1/adapters", { body: form });
    expect(res.status, await res.clone().text()).toBe(201);
  });

  it("answers with the adapter, and without it as the base model", async () => {
    const withLora = await complete({ model: MODEL, messages: Q });
    expect(withLora.model).toBe(MODEL);
    expect(withLora.system_fingerprint).toBe("reprise-gpu");
    expect(withLora.choices[0]!.message.content).toMatch(/^Arr/);
    const base = await complete({ model: "smollm2-135m-instruct", messages: Q });
    expect(base.choices[0]!.message.content).not.toMatch(/^Arr/);
    const models = (await (await call("/v1/models")).json()) as { data: { id: string }[] };
    expect(models.data.map((m) => m.id)).toContain(MODEL);
  });

  it("streams with the adapter", async () => {
    const res = await call("/v1/chat/completions", { json: { model: MODEL, messages: Q, temperature: 0, max_tokens: 16, stream: true } });
    const text = await res.text();
    const content = text.split("\n\n").filter((l) => l.startsWith("data: {")).map((l) => JSON.parse(l.slice(6)))
      .map((c) => c.choices[0]?.delta?.content ?? "").join("");
    expect(content).toBe((await complete({ model: MODEL, messages: Q })).choices[0]!.message.content);
  });

  // Turn 2 must say what the same history says in one session-less request: its restored K/V are the
  // adapter's. (The demo adapter opens turn 2 with " Ahoy, matey!", not "Arr".)
  it.each([["inline files and chunks", false], ["storage grants", true]])("keeps a session on the adapter across turns (%s)", async (_, grants) => {
    const extra = grants ? await grantsOn() : {};
    const sid = ((await (await call("/v1/sessions", { method: "POST" })).json()) as { id: string }).id;
    const first = await complete({ model: MODEL, session_id: sid, messages: Q }, extra);
    expect(first.choices[0]!.message.content).toMatch(/^Arr/);
    const Q2 = { role: "user", content: "And of Germany?" };
    const res = await call("/v1/chat/completions", { json: { model: MODEL, session_id: sid, temperature: 0, max_tokens: 16, messages: [Q2] } }, extra);
    const second = (await res.json()) as { choices: { message: { content: string } }[]; usage: { prompt_tokens_details: { cached_tokens: number } } };
    expect(second.usage.prompt_tokens_details.cached_tokens).toBeGreaterThan(0);
    const history = [...Q, { role: "assistant", content: first.choices[0]!.message.content }, Q2];
    const reference = await complete({ model: MODEL, messages: history }, extra);
    expect(second.choices[0]!.message.content).toBe(reference.choices[0]!.message.content);
    expect(second.choices[0]!.message.content).toMatch(/matey/);
  }, 120_000);
});

// The grant path (docs/lora-adapters.md, "Edge -> backend"): with STORAGE_GRANT_ORIGIN set, the edge sends
// read grants for the adapter's two R2 objects and the backend fetches them through this worker's signed
// storage route (a real socket). Each adapter here is a copy of the demo one whose config differs by random
// trailing whitespace: the same math under a key new to the backend, so the backend parses its own copy
// (fetched, or inline) instead of one it cached earlier.
describe.skipIf(!t.TEST_GPU_BACKEND_URL)("LoRA adapters fetched by the GPU backend through storage grants", () => {
  let granted: Record<string, string> = {};
  const nonce = () => " ".repeat(1 + Math.floor(Math.random() * 4000));

  async function upload(name: string) {
    const form = new FormData();
    const config = new TextDecoder().decode(await (await t.LORA_FILES.fetch("http://files/adapter_config.json")).arrayBuffer()) + nonce();
    form.append("adapter_config", new Blob([config]), "adapter_config.json");
    form.append("adapter_model", new Blob([await (await t.LORA_FILES.fetch("http://files/adapter_model.safetensors")).arrayBuffer()]), "adapter_model.safetensors");
    form.append("name", name);
    const res = await call("/v1/adapters", { body: form });
    expect(res.status, await res.clone().text()).toBe(201);
  }

  const chat = (model: string, extra: Record<string, string>) =>
    call("/v1/chat/completions", { json: { model, messages: Q, temperature: 0, max_tokens: 16 } }, extra);

  /** The frames of every request the edge sent to the backend's /v1/generate during `fn` (a pass-through spy). */
  async function backendBodies(fn: () => Promise<void>): Promise<{ header: Record<string, unknown>; kinds: number[] }[]> {
    const sent: Uint8Array[] = [];
    const real = globalThis.fetch;
    const spy = vi.spyOn(globalThis, "fetch").mockImplementation((input, init) => {
      if (String(input instanceof Request ? input.url : input).endsWith("/v1/generate") && init?.body instanceof Uint8Array) sent.push(init.body);
      return real(input, init);
    });
    try {
      await fn();
    } finally {
      spy.mockRestore();
    }
    return sent.map((b) => {
      const kinds: number[] = [];
      let header: Record<string, unknown> = {};
      for (let off = 0; off < b.byteLength; ) {
        const n = new DataView(b.buffer, b.byteOffset + off + 1, 4).getUint32(0, true);
        if (off === 0) header = JSON.parse(new TextDecoder().decode(b.subarray(5, 5 + n))) as Record<string, unknown>;
        kinds.push(b[off]!);
        off += 5 + n;
      }
      return { header, kinds };
    });
  }

  beforeAll(async () => {
    granted = await grantsOn();
    for (const name of ["pirate-granted", "pirate-inline", "pirate-gone"]) await upload(name);
  });

  it("answers as on the inline path, with grants for the two files and no adapter frame", async () => {
    let viaGrants = "";
    const sent = await backendBodies(async () => {
      const res = await chat("smollm2-135m-instruct:pirate-granted", granted);
      const text = await res.text();
      expect(res.status, text).toBe(200);
      viaGrants = (JSON.parse(text) as { choices: { message: { content: string } }[] }).choices[0]!.message.content;
    });
    expect(sent).toHaveLength(1);
    expect(sent[0]!.kinds).toEqual([0x01]);
    const ad = sent[0]!.header.adapter as { key: string; inline?: boolean; config: { grant: { key: string; mode: string; expires: number }; bytes: number }; weights: { grant: { key: string } } };
    expect(ad.inline).toBeUndefined();
    expect(ad.config.grant.mode).toBe("read");
    expect(ad.config.grant.key).toMatch(/^adapters\/[^/]+\/pirate-granted\/adapter_config\.json$/);
    expect(ad.weights.grant.key).toMatch(/^adapters\/[^/]+\/pirate-granted\/adapter_model\.safetensors$/);
    expect(ad.config.grant.expires - Date.now() / 1000).toBeLessThanOrEqual(600);
    expect(viaGrants).toMatch(/^Arr/);

    const inline = await backendBodies(async () => {
      const res = await chat("smollm2-135m-instruct:pirate-inline", {});
      const text = await res.text();
      expect(res.status, text).toBe(200);
      expect((JSON.parse(text) as { choices: { message: { content: string } }[] }).choices[0]!.message.content).toBe(viaGrants);
    });
    expect(inline.map((x) => x.kinds)).toEqual([[0x01, 0x03, 0x03]]);
    const inlineKey = (inline[0]!.header.adapter as { key: string }).key;
    expect(inline[0]!.header.adapter).toEqual({ key: inlineKey, inline: true });
    expect(inlineKey).not.toBe(ad.key);
  });

  it("leaves reading the files to the backend: a missing weights object fails there, not at the edge", async () => {
    const list = await env.BLOBS.list({ prefix: "adapters/" });
    const weights = list.objects.map((o) => o.key).find((k) => k.endsWith("/pirate-gone/adapter_model.safetensors"))!;
    await env.BLOBS.delete(weights);
    const viaGrants = await chat("smollm2-135m-instruct:pirate-gone", granted);
    expect(viaGrants.status).toBe(503);                // the backend's 502 adapter_fetch_failed: no backend could serve it
    const inline = await chat("smollm2-135m-instruct:pirate-gone", {});
    expect(inline.status).toBe(404);                   // the edge read the files itself and found one missing
  });
});
