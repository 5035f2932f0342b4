// A LoRA adapter served on the real GPU backend (started on CPU by scripts/test_all.sh): the demo
// pirate adapter, uploaded through the Worker, answers as a pirate where the base model does not;
// streamed or not, in a session or not, and listed in GET /v1/models. Skipped without a backend.
import { env } from "cloudflare:workers";
import { beforeAll, describe, expect, it } from "vitest";
import worker from "../src/index";
import { BASE, KEYS } from "./helpers";

const t = env as unknown as { TEST_GPU_BACKEND_URL: string; TEST_GPU_BACKEND_SECRET: string; LORA_FILES: Fetcher };
const ctx = { waitUntil() {}, passThroughOnException() {}, props: {} } as unknown as ExecutionContext;
const vars = () => ({ ...env, GPU_BACKEND_URL: t.TEST_GPU_BACKEND_URL, GPU_BACKEND_SECRET: t.TEST_GPU_BACKEND_SECRET }) as typeof env;
const MODEL = "smollm2-135m-instruct:pirate";
const Q = [{ role: "user", content: "What is the capital of France?" }];

function call(path: string, init: { method?: string; body?: BodyInit; json?: object } = {}) {
  const headers: Record<string, string> = { authorization: `Bearer ${KEYS.unlimited}` };
  if (init.json) headers["content-type"] = "application/json";
  const req = new Request(BASE + path, { method: init.method ?? (init.body || init.json ? "POST" : "GET"), headers,
    body: init.json ? JSON.stringify(init.json) : init.body });
  return worker.fetch(req as Request<unknown, IncomingRequestCfProperties>, vars(), ctx);
}

async function complete(body: object) {
  const res = await call("/v1/chat/completions", { json: { temperature: 0, max_tokens: 16, ...body } });
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

  it("keeps a session on the adapter across turns", async () => {
    const sid = ((await (await call("/v1/sessions", { method: "POST" })).json()) as { id: string }).id;
    const first = await complete({ model: MODEL, session_id: sid, messages: Q });
    expect(first.choices[0]!.message.content).toMatch(/^Arr/);
    const res = await call("/v1/chat/completions", { json: { model: MODEL, session_id: sid, temperature: 0, max_tokens: 16,
      messages: [{ role: "user", content: "And of Germany?" }] } });
    const second = (await res.json()) as { choices: { message: { content: string } }[]; usage: { prompt_tokens_details: { cached_tokens: number } } };
    expect(second.choices[0]!.message.content).toMatch(/^Arr/);
    expect(second.usage.prompt_tokens_details.cached_tokens).toBeGreaterThan(0);
  });
});
