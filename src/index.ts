import { Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import type { MiddlewareHandler } from "hono";
import type { AppEnv, Bindings } from "./env";
import { HttpError, notFound, onError } from "./errors";
import { auth } from "./middleware/auth";
import { rateLimit } from "./middleware/rate-limit";
import { handleQueue } from "./queue";
import { adapters } from "./routes/adapters";
import { chat } from "./routes/chat";
import { hooks, inboundHooks } from "./routes/hooks";
import { jobs } from "./routes/jobs";
import { models } from "./routes/models";
import { sessions } from "./routes/sessions";
import { storage } from "./routes/storage";
import { metrics } from "./routes/metrics";
import { webhookEndpoints } from "./routes/webhook-endpoints";

export { RateCounter } from "./durable/rate-counter";
export { SessionLease } from "./durable/session-lease";
export { TenantStore } from "./durable/tenant-store";

/** Body-size limit from MAX_BODY_BYTES (read per request: config lives only in `c.env`). */
function maxBody(): MiddlewareHandler<AppEnv> {
  return async function maxBody(c, next) {
    // adapter uploads have their own limit, from the base model's shape (routes/adapters.ts)
    if (c.req.method === "POST" && c.req.path.replace(/\/$/, "") === "/v1/adapters") return next();
    const max = Number(c.env.MAX_BODY_BYTES) || 1 << 20;
    return bodyLimit({
      maxSize: max,
      onError: () => {
        throw new HttpError(413, {
          message: `Request body too large: the limit is ${max} bytes.`,
          code: "request_too_large",
        });
      },
    })(c, next);
  };
}

export const app = new Hono<AppEnv>();

// Inbound hooks authenticate by their Standard Webhooks signature, not an API key: registered
// first, this route answers before the API-key middleware below would run.
app.route("/v1/hooks", inboundHooks);
app.use("/v1/*", auth(), rateLimit(), maxBody());
app.use("/metrics", auth());
app.route("/v1/chat/completions", chat);
app.route("/v1/adapters", adapters);
app.route("/v1/models", models);
app.route("/v1/sessions", sessions);
app.route("/metrics", metrics);
// Signed object URLs for the GPU backend: the grant in the query authorizes, not an API key.
app.route("/storage/v1/objects", storage);
app.route("/v1/jobs", jobs);
app.route("/v1/webhook_endpoints", webhookEndpoints);
app.route("/v1/hooks", hooks);
app.notFound(notFound);
app.onError(onError);

export default {
  fetch: (req, env, ctx) => app.fetch(req, env, ctx),
  queue: (batch, env) => handleQueue(batch, env),
} satisfies ExportedHandler<Bindings>;
