// Helpers for the webhook tests: the receiver process (test/receiver/server.mjs) and the API.
import { env } from "cloudflare:workers";
import { expect } from "vitest";
import { createApiKey } from "../src/middleware/auth";
import { api } from "./helpers";

const RECEIVER = (env as unknown as { TEST_RECEIVER_URL: string }).TEST_RECEIVER_URL;
export const MODEL = "smollm2-135m-instruct";

export interface ReceivedRequest {
  id: string;
  n: number;
  at: number;
  timestamp: number;
  signatures: number;
  verified: boolean;
  verifiedWith: number | null;
  body: { id: string; object: string; type: string; created_at: number; data: { id: string } };
  outcome: string;
  accepted: boolean;
}

export interface ReceiverLog {
  requests: ReceivedRequest[];
  attempts: number;
  unique: number;
  duplicates: number;
  verified: number;
  unverified: number;
}

export interface ReceiverConfig {
  secrets: string[];
  mode?: "ok" | "fail-first" | "always" | "gone" | "redirect" | "random";
  failFirst?: number;
  status?: number;
  retryAfter?: number;
  redirectTo?: string;
  random?: { error: number; timeout: number; drop: number };
  seed?: number;
}

let n = 0;
/** An API key of a tenant of its own (no rate limit): its endpoints see only its own events. */
export const tenantKey = (tag: string) => createApiKey(env.SESSIONS, { tenant: `t-${tag}-${Date.now().toString(36)}-${n++}`, name: tag, rateLimitPerMinute: 0 });
/** A fresh receiver name, so tests never see each other's requests. */
export const receiverName = (tag: string) => `${tag}-${Date.now().toString(36)}-${n++}`;
export const receiverUrl = (name: string) => `${RECEIVER}/r/${name}`;

export async function configure(name: string, cfg: ReceiverConfig): Promise<void> {
  const res = await fetch(`${RECEIVER}/_control/${name}`, { method: "PUT", body: JSON.stringify(cfg) });
  expect(res.status).toBe(200);
}

export async function received(name: string, summary = false): Promise<ReceiverLog> {
  return (await (await fetch(`${RECEIVER}/_control/${name}${summary ? "?summary=1" : ""}`)).json()) as ReceiverLog;
}

/** Polls `probe` until it returns a value (not undefined/false) or `timeoutMs` passes. */
export async function waitFor<T>(probe: () => Promise<T | undefined | false>, timeoutMs = 30_000, what = "condition", everyMs = 100): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export interface EndpointCreated {
  id: string;
  secret: string;
  url: string;
  events: string[];
  status: string;
}

/** Creates an endpoint pointing at receiver `name` and tells the receiver its secret. */
export async function endpointFor(key: string, name: string, cfg: Omit<ReceiverConfig, "secrets"> = {}, opts: { events?: string[] } = {}) {
  const res = await api("/v1/webhook_endpoints", { key, body: { url: receiverUrl(name), ...(opts.events ? { events: opts.events } : {}) } });
  expect(res.status).toBe(201);
  const ep = (await res.json()) as EndpointCreated;
  await configure(name, { secrets: [ep.secret], ...cfg });
  return ep;
}

export interface JobView {
  id: string;
  object: string;
  status: string;
  runs: number;
  result: { choices: { message: { content: string } }[]; usage: { completion_tokens: number } } | null;
  error: { code: string; message: string } | null;
  reused_result_of: string | null;
  events: { id: string; type: string }[];
  deliveries: {
    event_id: string;
    endpoint_id: string;
    state: string;
    round: number;
    attempts: { round: number; attempt: number; at: number; status: number | null; error: string | null }[];
  }[];
}

export async function submitJob(key: string, body: object = {}): Promise<JobView> {
  const res = await api("/v1/chat/completions", { key, body: { model: MODEL, temperature: 0, max_tokens: 1, background: true, messages: [{ role: "user", content: "Say hi." }], ...body } });
  expect(res.status, await res.clone().text()).toBe(202);
  return (await res.json()) as JobView;
}

/**
 * A job that fails at once for a real reason (its prompt and max_tokens overflow the 8192-token
 * context), so its chat.completion.failed event tests delivery without the cost of a generation.
 */
export const submitFailingJob = (key: string) =>
  submitJob(key, { max_tokens: 4096, messages: [{ role: "user", content: "many words ".repeat(2500) }] });

export async function getJob(key: string, id: string): Promise<JobView> {
  const res = await api(`/v1/jobs/${id}`, { key });
  expect(res.status).toBe(200);
  return (await res.json()) as JobView;
}

/** Waits until job `id` is terminal and every delivery of its events has settled. */
export async function settledJob(key: string, id: string, timeoutMs = 60_000): Promise<JobView> {
  return waitFor(
    async () => {
      const j = await getJob(key, id);
      const done = ["completed", "failed", "cancelled"].includes(j.status) && j.events.length > 0 && j.deliveries.every((d) => d.state !== "pending");
      return done ? j : undefined;
    },
    timeoutMs,
    `job ${id} to settle`,
  );
}
