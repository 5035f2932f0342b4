// Dispatch to the real GPU backend (gpu-backend/, started on CPU by scripts/test_all.sh, which passes
// its URL and secret as REPRISE_TEST_BACKEND_URL / _SECRET). Without a backend these are skipped:
// run them through scripts/test_all.sh.
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import worker from "../src/index";
import { BASE, KEYS } from "./helpers";

const t = env as unknown as { TEST_GPU_BACKEND_URL: string; TEST_GPU_BACKEND_SECRET: string };
const MODEL = "smollm2-135m-instruct";
// Not the bare "What is the capital of France?": in BF16 on a CPU its first token is a near-tie (float32
// logits 25.33 "The" vs 25.24 "L", both 25.5 in BF16) and greedy answers "L'Étoile, la Marseillaise".
const Q1 = "What is the capital of France? Answer in one sentence.";
const Q2 = "And what is the capital of Germany?";

interface Completion {
  system_fingerprint: string;
  choices: { message: { content: string }; finish_reason: string }[];
  usage: { prompt_tokens: number; completion_tokens: number; prompt_tokens_details: { cached_tokens: number } };
}

const ctx = { waitUntil() {}, passThroughOnException() {}, props: {} } as unknown as ExecutionContext;

async function call(path: string, body: object | undefined, vars: Record<string, string>) {
  const req = new Request(BASE + path, {
    method: "POST",
    headers: { authorization: `Bearer ${KEYS.unlimited}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return worker.fetch(req as Request<unknown, IncomingRequestCfProperties>, { ...env, GPU_BACKEND_URL: t.TEST_GPU_BACKEND_URL, GPU_BACKEND_SECRET: t.TEST_GPU_BACKEND_SECRET, ...vars } as typeof env, ctx);
}

async function complete(body: object, vars: Record<string, string>): Promise<Completion> {
  const res = await call("/v1/chat/completions", { model: MODEL, temperature: 0, max_tokens: 24, ...body }, vars);
  const text = await res.text();
  expect(res.status, text).toBe(200);
  return JSON.parse(text) as Completion;
}

const HEAVY = { GPU_PREFILL_THRESHOLD: "0" };

/** The second question with the whole history in one session-less request, on the GPU: the reference a resumed turn must equal. */
function completeFullHistory(first: Completion): Promise<Completion> {
  const messages = [
    { role: "user", content: Q1 },
    { role: "assistant", content: first.choices[0]!.message.content },
    { role: "user", content: Q2 },
  ];
  return complete({ messages }, HEAVY);
}
const LIGHT = { GPU_PREFILL_THRESHOLD: "100000" };

describe.skipIf(!t.TEST_GPU_BACKEND_URL)("dispatch to the real GPU backend", () => {
  it("should run a heavy step on the GPU and a light one on the edge", async () => {
    const gpu = await complete({ messages: [{ role: "user", content: Q1 }] }, HEAVY);
    expect(gpu.system_fingerprint).toBe("reprise-gpu");
    expect(gpu.choices[0]!.message.content).toContain("Paris");
    const edge = await complete({ messages: [{ role: "user", content: Q1 }], max_tokens: 2 }, LIGHT);
    expect(edge.system_fingerprint).toBe("reprise-edge");
  });

  it("should send a light step over the edge's compute budget to the GPU", async () => {
    const r = await complete({ messages: [{ role: "user", content: Q1 }], max_tokens: 4 }, { ...LIGHT, EDGE_STEP_BUDGET_MS: "1" });
    expect(r.system_fingerprint).toBe("reprise-gpu");
  });

  it("should resume a session on the GPU from the chunks it returned", async () => {
    const id = ((await (await call("/v1/sessions", undefined, HEAVY)).json()) as { id: string }).id;
    const t1 = await complete({ session_id: id, messages: [{ role: "user", content: Q1 }] }, HEAVY);
    const t2 = await complete({ session_id: id, messages: [{ role: "user", content: Q2 }] }, HEAVY);
    expect(t2.system_fingerprint).toBe("reprise-gpu");
    expect(t2.usage.prompt_tokens_details.cached_tokens).toBeGreaterThan(0);
    const full = await completeFullHistory(t1);
    expect(full.usage.prompt_tokens_details.cached_tokens).toBe(0);
    expect(t2.choices[0]!.message.content).toBe(full.choices[0]!.message.content);
  });

  it("should not send edge chunks to the GPU: a session moved there recomputes and stays correct", async () => {
    const id = ((await (await call("/v1/sessions", undefined, LIGHT)).json()) as { id: string }).id;
    const t1 = await complete({ session_id: id, messages: [{ role: "user", content: Q1 }], max_tokens: 8 }, LIGHT);
    expect(t1.system_fingerprint).toBe("reprise-edge");
    const t2 = await complete({ session_id: id, messages: [{ role: "user", content: Q2 }] }, HEAVY);
    expect(t2.system_fingerprint).toBe("reprise-gpu");
    expect(t2.usage.prompt_tokens_details.cached_tokens).toBe(0);
    const full = await completeFullHistory(t1);
    expect(t2.choices[0]!.message.content).toBe(full.choices[0]!.message.content);
  });

  it("should stream from the GPU", async () => {
    const res = await call("/v1/chat/completions", { model: MODEL, temperature: 0, max_tokens: 24, stream: true, messages: [{ role: "user", content: Q1 }] }, HEAVY);
    expect(res.status).toBe(200);
    const events = (await res.text()).split("\n\n").filter(Boolean);
    expect(events.at(-1)).toBe("data: [DONE]");
    const text = events
      .slice(0, -1)
      .map((e) => JSON.parse(e.slice(6)).choices[0]?.delta.content ?? "")
      .join("");
    expect(text).toContain("Paris");
  });

  it("should fall back to the edge when the GPU refuses the signature", async () => {
    const r = await complete({ messages: [{ role: "user", content: Q1 }], max_tokens: 2 }, { ...HEAVY, GPU_BACKEND_SECRET: "wrong" });
    expect(r.system_fingerprint).toBe("reprise-edge");
  });
});
