import { Hono } from "hono";
import { z } from "zod";
import { randomHex } from "../crypto";
import { EVENT_TYPES } from "../durable/tenant/endpoints";
import type { AppEnv } from "../env";
import { HttpError } from "../errors";
import { tenantStore } from "../jobs/messages";
import { parseBody } from "../schemas";
import { newWebhookSecret, sealSecret } from "../webhooks/secrets";
import { checkOutboundUrl, outboundPolicy } from "../webhooks/ssrf";

/**
 * Webhook endpoints (docs/webhooks.md): where a tenant's events go. The secret is returned once,
 * at creation and at each rotation; the server keeps only its ciphertext.
 */
export const webhookEndpoints = new Hono<AppEnv>();

/** How long a rotated-out secret keeps signing by default (receivers switch within this). */
const DEFAULT_OVERLAP_S = 24 * 3600;
const MAX_OVERLAP_S = 7 * 24 * 3600;

const createSchema = z.strictObject({
  url: z.string().min(1).max(2048),
  events: z.array(z.enum(EVENT_TYPES)).min(1).max(EVENT_TYPES.length).optional(),
  description: z.string().max(256).optional(),
});

const rotateSchema = z.strictObject({
  expire_previous_after_seconds: z.number().int().min(0).max(MAX_OVERLAP_S).optional(),
});

const replaySchema = z
  .strictObject({
    event_id: z.string().regex(/^evt_[0-9a-f]{1,64}$/).optional(),
    since: z.number().int().min(0).optional(),
    until: z.number().int().min(0).optional(),
  })
  .refine((r) => (r.event_id === undefined) !== (r.since === undefined), {
    message: "give either event_id or since (with an optional until), not both",
    path: ["event_id"],
  });

const notFound = (id: string) => new HttpError(404, { message: `No webhook endpoint '${id}'.`, code: "webhook_endpoint_not_found" });
const store = (c: { env: AppEnv["Bindings"]; var: AppEnv["Variables"] }) => tenantStore(c.env, c.var.apiKey.tenant);

webhookEndpoints.post("/", async (c) => {
  const body = parseBody(createSchema, await c.req.text());
  const verdict = await checkOutboundUrl(body.url, outboundPolicy(c.env));
  if (!verdict.ok)
    throw new HttpError(400, { message: `This URL cannot receive webhooks: ${verdict.reason}.`, param: "url", code: "url_not_allowed" });
  const id = "we_" + randomHex(12);
  const secret = newWebhookSecret();
  const sealed = await sealSecret(c.env.WEBHOOK_SECRETS_KEY, id, secret);
  const view = await store(c).createEndpoint(c.var.apiKey.tenant, {
    id,
    url: verdict.url.href,
    events: body.events ?? [...EVENT_TYPES],
    description: body.description ?? null,
    secret: sealed,
  });
  return c.json({ ...view, secret }, 201);
});

webhookEndpoints.get("/", async (c) => c.json({ object: "list", data: await store(c).listEndpoints() }));

webhookEndpoints.get("/:id", async (c) => {
  const view = await store(c).getEndpoint(c.req.param("id"));
  if (!view) throw notFound(c.req.param("id"));
  return c.json(view);
});

webhookEndpoints.delete("/:id", async (c) => {
  const id = c.req.param("id");
  if (!(await store(c).deleteEndpoint(id))) throw notFound(id);
  return c.json({ id, object: "webhook_endpoint.deleted", deleted: true });
});

/** New secret, shown once; the previous one keeps signing beside it for the overlap (default 24 h). */
webhookEndpoints.post("/:id/rotate_secret", async (c) => {
  const id = c.req.param("id");
  const body = parseBody(rotateSchema, await c.req.text());
  const secret = newWebhookSecret();
  const sealed = await sealSecret(c.env.WEBHOOK_SECRETS_KEY, id, secret);
  const view = await store(c).rotateSecret(id, sealed, (body.expire_previous_after_seconds ?? DEFAULT_OVERLAP_S) * 1000);
  if (!view) throw notFound(id);
  return c.json({ ...view, secret });
});

/** Redelivers one event (`event_id`) or every event created in [since, until) (unix seconds). */
webhookEndpoints.post("/:id/replay", async (c) => {
  const id = c.req.param("id");
  const body = parseBody(replaySchema, await c.req.text());
  const st = store(c);
  const sel =
    body.event_id !== undefined ? { eventId: body.event_id } : { since: body.since! * 1000, until: (body.until ?? Date.now() / 1000 + 1) * 1000 };
  const n = await st.replay(id, sel);
  if (n === null) {
    const view = await st.getEndpoint(id);
    if (!view) throw notFound(id);
    throw new HttpError(409, { message: `Webhook endpoint '${id}' is disabled (${view.disabled_reason}).`, code: "webhook_endpoint_disabled" });
  }
  return c.json({ object: "webhook_replay", endpoint_id: id, events: n }, 202);
});

webhookEndpoints.get("/:id/dead_letters", async (c) => {
  const id = c.req.param("id");
  const st = store(c);
  if (!(await st.getEndpoint(id))) throw notFound(id);
  return c.json({ object: "list", data: await st.deadLetters(id) });
});
