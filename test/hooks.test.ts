// Inbound hooks: another service's signed event becomes a prompt (Mustache template), runs as a
// background job (in the hook's session when it has one) and its result goes to the hook's
// endpoint as an event. Events are signed here with the official `standardwebhooks` package.
import { SELF } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import { Webhook } from "standardwebhooks";
import { api, BASE, errorOf, KEYS } from "./helpers";
import { endpointFor, received, receiverName, settledJob, tenantKey } from "./webhook-helpers";

interface Hook {
  id: string;
  url: string;
  secret: string;
}

async function createHook(key: string, body: object): Promise<Hook> {
  const res = await api("/v1/hooks", { key, body });
  expect(res.status, await res.clone().text()).toBe(201);
  return (await res.json()) as Hook;
}

let n = 0;
/** POSTs `payload` to the hook, signed with `secret` (webhook-id and time overridable). */
function send(hook: Hook, payload: unknown, opts: { secret?: string; id?: string; at?: Date; raw?: string } = {}) {
  const body = opts.raw ?? JSON.stringify(payload);
  const id = opts.id ?? `msg_${Date.now()}_${n++}`;
  const at = opts.at ?? new Date();
  const sig = new Webhook(opts.secret ?? hook.secret).sign(id, at, body);
  return SELF.fetch(BASE + hook.url, {
    method: "POST",
    headers: { "content-type": "application/json", "webhook-id": id, "webhook-timestamp": String(Math.floor(at.getTime() / 1000)), "webhook-signature": sig },
    body,
  });
}

const TEMPLATE = "A customer wrote about order {{order.id}}: {{{message}}} Reply in five words.";

describe("inbound hooks", () => {
  it("should refuse templates that do not parse or use partials, with a 400", async () => {
    for (const template of ["Hi {{name", "{{#items}}x", "{{> header}} hi", " "]) {
      const e = await errorOf(await api("/v1/hooks", { body: { template } }));
      expect(e, template).toMatchObject({ status: 400, param: "template" });
    }
    expect((await errorOf(await api("/v1/hooks", { body: { template: "x", endpoint_id: "we_00" } }))).status).toBe(404);
  });

  it("should run a signed event through the template in the hook's session and deliver the result to its endpoint", async () => {
    const key = await tenantKey("hook");
    const name = receiverName("hook-out");
    const ep = await endpointFor(key, name);
    const sid = ((await (await api("/v1/sessions", { key, method: "POST" })).json()) as { id: string }).id;
    const hook = await createHook(key, { template: TEMPLATE, session_id: sid, endpoint_id: ep.id, max_tokens: 2, temperature: 0 });
    expect(hook.secret).toMatch(/^whsec_/);
    expect(JSON.stringify(await (await api(`/v1/hooks/${hook.id}`, { key })).json())).not.toContain("whsec_");

    const first = await send(hook, { order: { id: 1042 }, message: "Where is my <parcel>?" });
    expect(first.status).toBe(202);
    const job1 = await settledJob(key, ((await first.json()) as { id: string }).id);
    const second = await send(hook, { order: { id: 1043 }, message: "It arrived & thanks!" });
    const job2 = await settledJob(key, ((await second.json()) as { id: string }).id);
    expect([job1.status, job2.status]).toEqual(["completed", "completed"]);

    // The session holds both turns, prompts rendered without HTML escaping: the thread keeps its context.
    const view = (await (await api(`/v1/sessions/${sid}`, { key })).json()) as { turns: number; messages: { role: string; content: string }[] };
    expect(view.turns).toBe(2);
    expect(view.messages.filter((m) => m.role === "user").map((m) => m.content)).toEqual([
      "A customer wrote about order 1042: Where is my <parcel>? Reply in five words.",
      "A customer wrote about order 1043: It arrived & thanks! Reply in five words.",
    ]);
    const log = await received(name);
    expect(log.requests.map((r) => [r.body.type, r.body.data.id, r.verified])).toEqual([
      ["chat.completion.completed", job1.id, true],
      ["chat.completion.completed", job2.id, true],
    ]);
  });

  it("should refuse replayed, stale, unsigned, mis-signed, oversized and unrenderable events", async () => {
    const key = await tenantKey("hook-refuse");
    const hook = await createHook(key, { template: "Summarize: {{text}}", max_tokens: 1, temperature: 0 });
    const ok = await send(hook, { text: "hello" }, { id: "msg_once" });
    expect(ok.status).toBe(202);
    expect(await errorOf(await send(hook, { text: "hello" }, { id: "msg_once" }))).toMatchObject({ status: 409, code: "webhook_replayed" });
    expect(await errorOf(await send(hook, { text: "x" }, { at: new Date(Date.now() - 6 * 60_000) }))).toMatchObject({ status: 401, code: "stale_timestamp" });
    expect(await errorOf(await send(hook, { text: "x" }, { at: new Date(Date.now() + 6 * 60_000) }))).toMatchObject({ status: 401, code: "stale_timestamp" });
    expect(await errorOf(await send(hook, { text: "x" }, { secret: "whsec_" + btoa("another secret of 24 bytes") }))).toMatchObject({
      status: 401,
      code: "invalid_signature",
    });
    const unsigned = await SELF.fetch(BASE + hook.url, { method: "POST", body: "{}" });
    expect(await errorOf(unsigned)).toMatchObject({ status: 401, code: "missing_headers" });
    expect(await errorOf(await send(hook, { other: 1 }))).toMatchObject({ status: 400, code: "template_error" });
    expect(await errorOf(await send(hook, null, { raw: "{not json" }))).toMatchObject({ status: 400, code: "invalid_json" });
    expect(await errorOf(await send(hook, { text: "y".repeat(70_000) }))).toMatchObject({ status: 413 });
    // An API key does not stand in for the signature, and unknown hooks are 404.
    const withKey = await SELF.fetch(BASE + hook.url, { method: "POST", headers: { authorization: `Bearer ${KEYS.a}` }, body: "{}" });
    expect(withKey.status).toBe(401);
    expect((await send({ ...hook, url: "/v1/hooks/hook_" + "0".repeat(80) }, { text: "x" })).status).toBe(404);
    expect((await api(`/v1/hooks/${hook.id}`, { key: KEYS.b })).status).toBe(404);
    expect((await api(`/v1/hooks/${hook.id}`, { key, method: "DELETE" })).status).toBe(200);
    expect((await send(hook, { text: "hello" })).status).toBe(404);
  });
});
