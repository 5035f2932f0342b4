import { Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import { z } from "zod";
import { randomHex } from "../crypto";
import type { AppEnv } from "../env";
import { HttpError } from "../errors";
import { checkTemplate, renderPrompt } from "../hooks/template";
import { enqueueJob } from "../jobs/create";
import { tenantStore } from "../jobs/messages";
import { DEFAULT_MAX_TOKENS, MAX_COMPLETION_TOKENS, parseBody, parseJson } from "../schemas";
import { getSession } from "../sessions/store";
import { newWebhookSecret, openSecret, sealSecret } from "../webhooks/secrets";
import { TIMESTAMP_TOLERANCE_S, verifyWebhook } from "../webhooks/sign";

/**
 * Inbound hooks (docs/webhooks.md, "Inbound hooks"): another service POSTs a Standard Webhooks
 * signed event to `/v1/hooks/:id`; its JSON fills the hook's prompt template, the completion runs
 * as a background job (in the hook's session, if it has one) and its result goes to the hook's
 * endpoint as an event. Managing hooks needs an API key; receiving needs the hook's signature.
 */
export const hooks = new Hono<AppEnv>();
export const inboundHooks = new Hono<AppEnv>();

export const MAX_INBOUND_BYTES = 64 * 1024;
/** webhook-ids are remembered past the timestamp tolerance, so a replay is refused either way. */
const SEEN_KEEP_MS = 2 * TIMESTAMP_TOLERANCE_S * 1000;

const createSchema = z.strictObject({
  template: z.string().min(1),
  model: z.string().min(1).max(256).optional(),
  max_tokens: z.number().int().min(1).max(MAX_COMPLETION_TOKENS).optional(),
  temperature: z.number().min(0).max(2).optional(),
  session_id: z.string().regex(/^[A-Za-z0-9_-]{1,128}$/).optional(),
  endpoint_id: z.string().regex(/^we_[0-9a-f]{1,64}$/).optional(),
});

/** A hook id names the tenant's object (64 hex) and the hook within it, so the receiver needs no index. */
const HOOK_ID = /^hook_([0-9a-f]{64})([0-9a-f]{16})$/;
const notFound = (id: string) => new HttpError(404, { message: `No hook '${id}'.`, code: "hook_not_found" });

hooks.post("/", async (c) => {
  const body = parseBody(createSchema, await c.req.text());
  const t = checkTemplate(body.template);
  if (!t.ok) throw new HttpError(400, { message: `Invalid template: ${t.error}.`, param: "template", code: "invalid_template" });
  const tenant = c.var.apiKey.tenant;
  const st = tenantStore(c.env, tenant);
  if (body.session_id) await getSession(c.env.SESSIONS, body.session_id, tenant);
  if (body.endpoint_id && !(await st.getEndpoint(body.endpoint_id)))
    throw new HttpError(404, { message: `No webhook endpoint '${body.endpoint_id}'.`, param: "endpoint_id", code: "webhook_endpoint_not_found" });
  const id = `hook_${c.env.TENANTS.idFromName(tenant).toString()}${randomHex(8)}`;
  const secret = newWebhookSecret();
  const view = await st.createHook(tenant, {
    id,
    secret: await sealSecret(c.env.WEBHOOK_SECRETS_KEY, id, secret),
    template: body.template,
    model: body.model ?? "smollm2-135m-instruct",
    max_tokens: body.max_tokens ?? null,
    temperature: body.temperature ?? null,
    session_id: body.session_id ?? null,
    endpoint_id: body.endpoint_id ?? null,
    created_at: Date.now(),
  });
  return c.json({ ...view, secret }, 201);
});

hooks.get("/:id", async (c) => {
  const view = await tenantStore(c.env, c.var.apiKey.tenant).getHook(c.req.param("id"));
  if (!view) throw notFound(c.req.param("id"));
  return c.json(view);
});

hooks.delete("/:id", async (c) => {
  const id = c.req.param("id");
  if (!(await tenantStore(c.env, c.var.apiKey.tenant).deleteHook(id))) throw notFound(id);
  return c.json({ id, object: "hook.deleted", deleted: true });
});

inboundHooks.post(
  "/:id",
  bodyLimit({
    maxSize: MAX_INBOUND_BYTES,
    onError: () => {
      throw new HttpError(413, { message: `Inbound events are limited to ${MAX_INBOUND_BYTES} bytes.`, code: "request_too_large" });
    },
  }),
  async (c) => {
    const id = c.req.param("id");
    const m = HOOK_ID.exec(id);
    if (!m) throw notFound(id);
    let objectId: DurableObjectId;
    try {
      objectId = c.env.TENANTS.idFromString(m[1]!);
    } catch {
      throw notFound(id); // not an id this namespace made
    }
    const st = c.env.TENANTS.get(objectId);
    const hook = await st.getHookRow(id);
    if (!hook) throw notFound(id);
    const raw = new Uint8Array(await c.req.arrayBuffer());
    const secret = await openSecret(c.env.WEBHOOK_SECRETS_KEY, id, hook.secret);
    const v = await verifyWebhook(secret, c.req.raw.headers, raw);
    if (!v.ok) {
      const message =
        v.reason === "stale_timestamp"
          ? `The webhook-timestamp is more than ${TIMESTAMP_TOLERANCE_S} s away from the server's clock.`
          : v.reason === "missing_headers"
            ? "webhook-id, webhook-timestamp and webhook-signature are required."
            : "No signature in webhook-signature matches this hook's secret.";
      throw new HttpError(401, { message, code: v.reason === "bad_signature" ? "invalid_signature" : v.reason });
    }
    const data = parseJson(new TextDecoder().decode(raw));
    const r = renderPrompt(hook.template, data);
    if (!r.ok) throw new HttpError(400, { message: `The template cannot be rendered: ${r.error}.`, code: "template_error" });
    if (!(await st.markHookMessage(id, v.msgId, SEEN_KEEP_MS)))
      throw new HttpError(409, { message: `webhook-id '${v.msgId}' was already received.`, code: "webhook_replayed" });
    const tenant = await st.tenantName();
    const job = await enqueueJob(
      c.env,
      tenant,
      {
        model: hook.model,
        messages: [{ role: "user", content: r.prompt }],
        maxTokens: hook.max_tokens ?? DEFAULT_MAX_TOKENS,
        maxTokensGiven: hook.max_tokens != null,
        temperature: hook.temperature ?? 1,
        topP: 1,
        stop: [],
        stream: false,
        includeUsage: false,
        sessionId: hook.session_id ?? undefined,
        background: true,
      },
      { endpointId: hook.endpoint_id, hookId: id },
    );
    return c.json(job, 202, { location: `/v1/jobs/${job.id}` });
  },
);
