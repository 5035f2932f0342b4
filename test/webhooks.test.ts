// Background jobs and webhook delivery end to end, in workerd with the real queues and Durable
// Objects, against a real receiver process (test/receiver/server.mjs) that verifies every request
// with the official `standardwebhooks` package. Time is compressed: the Worker's retry schedule
// here is ten attempts about a second apart (vitest.config.ts), the attempt timeout 1.5 s.
// Every test has a tenant of its own, so its endpoints see only its own events.
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { acquireLease, getSession, releaseLease } from "../src/sessions/store";
import { api, errorOf, KEYS } from "./helpers";
import { configure, endpointFor, getJob, received, receiverName, receiverUrl, settledJob, submitFailingJob, submitJob, tenantKey, waitFor } from "./webhook-helpers";
import type { JobView } from "./webhook-helpers";

const replay = (key: string, endpoint: string, body: object) => api(`/v1/webhook_endpoints/${endpoint}/replay`, { key, body });
const attemptsOf = (j: JobView) => j.deliveries[0]!.attempts;

describe("background jobs", () => {
  it("should answer 202 with a queued job, run it from the queue and deliver a signed event", async () => {
    const key = await tenantKey("basic");
    const name = receiverName("basic");
    const ep = await endpointFor(key, name);
    expect(ep.secret).toMatch(/^whsec_[A-Za-z0-9+/]{43}=$/);
    const job = await submitJob(key, { max_tokens: 2 });
    expect(job).toMatchObject({ object: "chat.completion.job", status: "queued", result: null });
    const done = await settledJob(key, job.id);
    expect(done.status).toBe("completed");
    expect(done.result!.usage.completion_tokens).toBeGreaterThan(0);
    expect(done.events).toEqual([expect.objectContaining({ type: "chat.completion.completed" })]);
    expect(done.deliveries).toEqual([expect.objectContaining({ endpoint_id: ep.id, state: "delivered" })]);
    const log = await received(name);
    expect(log.requests).toHaveLength(1);
    const r = log.requests[0]!;
    expect(r.verified).toBe(true);
    expect(r.id).toBe(done.events[0]!.id);
    expect(r.body).toEqual({ id: r.id, object: "event", type: "chat.completion.completed", created_at: expect.any(Number), data: { id: job.id } });
    expect(JSON.stringify(r.body).length).toBeLessThan(20_000);
  });

  it("should take Prefer: respond-async, refuse streaming, and hide jobs from other tenants", async () => {
    const key = await tenantKey("prefer");
    const res = await api("/v1/chat/completions", {
      key,
      body: { model: "smollm2-135m-instruct", temperature: 0, max_tokens: 1, messages: [{ role: "user", content: "Say hi." }] },
      headers: { prefer: "respond-async, wait=5" },
    });
    expect(res.status).toBe(202);
    expect(res.headers.get("preference-applied")).toBe("respond-async");
    const job = (await res.json()) as JobView;
    expect(res.headers.get("location")).toBe(`/v1/jobs/${job.id}`);
    expect((await api(`/v1/jobs/${job.id}`, { key: KEYS.b })).status).toBe(404);
    expect((await api(`/v1/jobs/${job.id}/cancel`, { key: KEYS.b, method: "POST" })).status).toBe(404);
    const stream = await api("/v1/chat/completions", {
      key,
      body: { model: "smollm2-135m-instruct", background: true, stream: true, messages: [{ role: "user", content: "x" }] },
    });
    expect(await errorOf(stream)).toMatchObject({ status: 400, param: "stream" });
    const unknownModel = await api("/v1/chat/completions", { key, body: { model: "nope", background: true, messages: [{ role: "user", content: "x" }] } });
    expect(await errorOf(unknownModel)).toMatchObject({ status: 404, code: "model_not_found" });
    expect((await settledJob(key, job.id)).status).toBe("completed");
    const late = await api(`/v1/jobs/${job.id}/cancel`, { key, method: "POST" });
    expect(await errorOf(late)).toMatchObject({ status: 409, code: "job_not_cancellable" });
  });

  it("should cancel a job that is still queued and send chat.completion.cancelled", async () => {
    const key = await tenantKey("cancel");
    const name = receiverName("cancel");
    await endpointFor(key, name);
    const sid = ((await (await api("/v1/sessions", { key, method: "POST" })).json()) as { id: string }).id;
    // The session is held by another turn, so the job waits in the queue.
    const rec = await getSession(env.SESSIONS, sid, await tenantOf(key));
    const lease = await acquireLease(env, rec);
    const job = await submitJob(key, { session_id: sid });
    await waitFor(async () => (await getJob(key, job.id)).runs > 0 || undefined, 20_000, "the job to find its session busy");
    const res = await api(`/v1/jobs/${job.id}/cancel`, { key, method: "POST" });
    expect(res.status).toBe(200);
    await releaseLease(env, sid, lease);
    const done = await settledJob(key, job.id);
    expect(done).toMatchObject({ status: "cancelled", result: null });
    expect(done.events.map((e) => e.type)).toEqual(["chat.completion.cancelled"]);
    const log = await received(name);
    expect(log.requests.map((r) => r.body.type)).toEqual(["chat.completion.cancelled"]);
  });

  it("should run a session's background turns one at a time and lose none", async () => {
    const key = await tenantKey("session");
    const sid = ((await (await api("/v1/sessions", { key, method: "POST" })).json()) as { id: string }).id;
    const questions = ["Name a colour.", "Name a fruit.", "Name an animal."];
    const jobs = await Promise.all(questions.map((q) => submitJob(key, { session_id: sid, max_tokens: 2, messages: [{ role: "user", content: q }] })));
    for (const j of jobs) expect((await settledJob(key, j.id, 90_000)).status).toBe("completed");
    const view = (await (await api(`/v1/sessions/${sid}`, { key })).json()) as { turns: number; messages: { role: string; content: string }[] };
    expect(view.turns).toBe(3);
    const asked = view.messages.filter((m) => m.role === "user").map((m) => m.content);
    expect(asked.sort()).toEqual([...questions].sort());
  });

  it("should reuse the result of an identical greedy job instead of running the model again", async () => {
    const key = await tenantKey("memo");
    const first = await settledJob(key, (await submitJob(key, { max_tokens: 3 })).id);
    const second = await settledJob(key, (await submitJob(key, { max_tokens: 3 })).id);
    expect(first.reused_result_of).toBeNull();
    expect(second.reused_result_of).toBe(first.id);
    expect(second.result!.choices).toEqual(first.result!.choices);
    // Sampling is not deterministic: it runs.
    const sampled = await settledJob(key, (await submitJob(key, { max_tokens: 3, temperature: 0.7 })).id);
    expect(sampled.reused_result_of).toBeNull();
  });
});

async function tenantOf(key: string): Promise<string> {
  const { sha256Hex } = await import("../src/crypto");
  const rec = (await env.SESSIONS.get(`key:${await sha256Hex(key)}`, "json")) as { tenant: string };
  return rec.tenant;
}

describe("webhook delivery", () => {
  it("should sign with both secrets during a rotation's overlap, then with the new one only", async () => {
    const key = await tenantKey("rotate");
    const name = receiverName("rotate");
    const ep = await endpointFor(key, name);
    const job = await settledJob(key, (await submitJob(key)).id);
    const eventId = job.events[0]!.id;
    const rot = await api(`/v1/webhook_endpoints/${ep.id}/rotate_secret`, { key, body: {} });
    expect(rot.status).toBe(200);
    const rotated = (await rot.json()) as { secret: string; previous_secret_expires_at: number };
    expect(rotated.secret).not.toBe(ep.secret);
    expect(rotated.previous_secret_expires_at).toBeGreaterThan(Date.now() / 1000 + 23 * 3600);
    // A receiver that only knows the new secret, and one that still only knows the old one: both verify.
    for (const [i, secret] of [rotated.secret, ep.secret].entries()) {
      await configure(name, { secrets: [secret] });
      expect((await replay(key, ep.id, { event_id: eventId })).status).toBe(202);
      const log = await waitFor(async () => ((await received(name)).requests.length ? received(name) : undefined), 20_000);
      expect(log.requests[0], `secret ${i}`).toMatchObject({ id: eventId, verified: true, signatures: 2 });
    }
    // Retire the old secret now: one signature, and the old secret no longer verifies.
    const now = (await (await api(`/v1/webhook_endpoints/${ep.id}/rotate_secret`, { key, body: { expire_previous_after_seconds: 0 } })).json()) as {
      secret: string;
    };
    await configure(name, { secrets: [rotated.secret, now.secret] });
    expect((await replay(key, ep.id, { event_id: eventId })).status).toBe(202);
    const log = await waitFor(async () => ((await received(name)).requests.length ? received(name) : undefined), 20_000);
    expect(log.requests[0]).toMatchObject({ verified: true, verifiedWith: 1, signatures: 1 });
  });

  it("should deliver every event exactly once after dedup to a receiver that fails the first attempts", async () => {
    const key = await tenantKey("failfirst");
    const name = receiverName("failfirst");
    await endpointFor(key, name, { mode: "fail-first", failFirst: 3, status: 500 });
    const jobs = await Promise.all([1, 2, 3].map(() => submitFailingJob(key)));
    const done = await Promise.all(jobs.map((j) => settledJob(key, j.id)));
    const log = await received(name);
    expect(log.unique).toBe(3);
    expect(log.duplicates).toBe(0);
    expect(log.requests).toHaveLength(12);
    expect(log.requests.every((r) => r.verified)).toBe(true);
    for (const j of done) {
      expect(j.deliveries[0]!.state).toBe("delivered");
      expect(attemptsOf(j).map((a) => a.status)).toEqual([500, 500, 500, 200]);
      // One webhook-id for every attempt of an event.
      expect(new Set(log.requests.filter((r) => r.body.data.id === j.id).map((r) => r.id))).toEqual(new Set([j.events[0]!.id]));
    }
  });

  it("should honour Retry-After on 503 and 429", async () => {
    for (const status of [503, 429]) {
      const key = await tenantKey(`retry-after-${status}`);
      const name = receiverName(`retry-after-${status}`);
      await endpointFor(key, name, { mode: "fail-first", failFirst: 1, status, retryAfter: 3 });
      const job = await settledJob(key, (await submitFailingJob(key)).id);
      const [a, b] = attemptsOf(job);
      expect(a!.status).toBe(status);
      expect(b!.status).toBe(200);
      // The schedule alone would retry after ~1 s.
      expect(b!.at - a!.at).toBeGreaterThanOrEqual(3);
      const log = await received(name);
      expect(log.requests[1]!.at - log.requests[0]!.at).toBeGreaterThanOrEqual(2_900);
    }
  });

  it("should disable an endpoint that answers 410 Gone and send it nothing more", async () => {
    const key = await tenantKey("gone");
    const name = receiverName("gone");
    const ep = await endpointFor(key, name, { mode: "gone" });
    const job = await settledJob(key, (await submitFailingJob(key)).id);
    expect(job).toMatchObject({ status: "failed", error: { code: "context_length_exceeded" } });
    expect(job.deliveries[0]!.state).toBe("disabled");
    expect(attemptsOf(job).map((a) => a.status)).toEqual([410]);
    const view = (await (await api(`/v1/webhook_endpoints/${ep.id}`, { key })).json()) as { status: string; disabled_reason: string };
    expect(view.status).toBe("disabled");
    expect(view.disabled_reason).toMatch(/410/);
    const next = await settledJob(key, (await submitFailingJob(key)).id);
    expect(next.deliveries).toEqual([]);
    expect((await received(name)).requests).toHaveLength(1);
    expect(await errorOf(await replay(key, ep.id, { event_id: job.events[0]!.id }))).toMatchObject({ status: 409, code: "webhook_endpoint_disabled" });
  });

  it("should dead-letter an event after the last try, list it, and redeliver it by id and by time range", async () => {
    const key = await tenantKey("dead");
    const name = receiverName("dead");
    const ep = await endpointFor(key, name, { mode: "always", status: 502 });
    const t0 = Math.floor(Date.now() / 1000);
    const job = await settledJob(key, (await submitFailingJob(key)).id, 60_000);
    expect(job.deliveries[0]!.state).toBe("dead");
    expect(attemptsOf(job)).toHaveLength(10);
    const letters = await waitFor(async () => {
      const l = (await (await api(`/v1/webhook_endpoints/${ep.id}/dead_letters`, { key })).json()) as { data: { event_id: string; job_id: string; reason: string }[] };
      return l.data.length ? l.data : undefined;
    });
    expect(letters).toEqual([expect.objectContaining({ event_id: job.events[0]!.id, job_id: job.id, reason: "no success after 10 attempts" })]);
    // The receiver recovers: replay by id, then everything since t0 (the same one event).
    await configure(name, { secrets: [ep.secret], mode: "ok" });
    expect(await (await replay(key, ep.id, { event_id: job.events[0]!.id })).json()).toMatchObject({ events: 1 });
    const back = await waitFor(async () => ((await getJob(key, job.id)).deliveries[0]!.state === "delivered" ? getJob(key, job.id) : undefined));
    expect(back.deliveries[0]!.round).toBe(1);
    expect(await (await replay(key, ep.id, { since: t0 - 1 })).json()).toMatchObject({ events: 1 });
    await waitFor(async () => ((await received(name)).unique === 1 && (await received(name)).requests.length === 2) || undefined);
    expect((await received(name)).requests.map((r) => r.id)).toEqual([job.events[0]!.id, job.events[0]!.id]);
    expect(await errorOf(await replay(key, ep.id, { event_id: job.events[0]!.id, since: 1 }))).toMatchObject({ status: 400 });
  });

  it("should not follow a redirect: a 3xx is a failed attempt and its target gets nothing", async () => {
    const key = await tenantKey("redirect");
    const name = receiverName("redirect");
    const target = receiverName("redirect-target");
    await configure(target, { secrets: [] });
    // Even a target the rules would allow is not followed by default (WEBHOOK_MAX_REDIRECTS = 0).
    await endpointFor(key, name, { mode: "redirect", status: 307, redirectTo: receiverUrl(target) });
    const job = await settledJob(key, (await submitFailingJob(key)).id, 60_000);
    expect(job.deliveries[0]!.state).toBe("dead");
    expect(attemptsOf(job)[0]).toMatchObject({ status: 307, error: expect.stringMatching(/not followed/) });
    expect((await received(name)).requests).toHaveLength(10);
    expect((await received(target)).requests).toHaveLength(0);
  });
});

describe("webhook endpoints API", () => {
  it("should list, show and delete endpoints without ever showing a secret again", async () => {
    const key = await tenantKey("crud");
    const ep = await endpointFor(key, receiverName("crud"), {}, { events: ["chat.completion.failed"] });
    expect(ep.events).toEqual(["chat.completion.failed"]);
    const list = (await (await api("/v1/webhook_endpoints", { key })).json()) as { data: object[] };
    expect(list.data).toHaveLength(1);
    expect(JSON.stringify(list)).not.toContain("whsec_");
    expect(JSON.stringify(await (await api(`/v1/webhook_endpoints/${ep.id}`, { key })).json())).not.toContain("whsec_");
    expect((await api(`/v1/webhook_endpoints/${ep.id}`, { key: KEYS.b })).status).toBe(404);
    expect(await errorOf(await api("/v1/webhook_endpoints", { key, body: { url: "https://example.com", events: ["nope"] } }))).toMatchObject({
      status: 400,
      param: "events[0]",
    });
    expect((await api(`/v1/webhook_endpoints/${ep.id}`, { key, method: "DELETE" })).status).toBe(200);
    expect((await api(`/v1/webhook_endpoints/${ep.id}`, { key })).status).toBe(404);
  });
});
