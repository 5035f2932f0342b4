import { Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import type { MiddlewareHandler } from "hono";
import type { AppEnv, Bindings } from "./env";
import { HttpError, notFound, onError } from "./errors";
import { auth } from "./middleware/auth";
import { rateLimit } from "./middleware/rate-limit";
import { chat } from "./routes/chat";
import { models } from "./routes/models";
import { sessions } from "./routes/sessions";
import { storage } from "./routes/storage";
import { metrics } from "./routes/metrics";

/** Body-size limit from MAX_BODY_BYTES (read per request: config lives only in `c.env`). */
function maxBody(): MiddlewareHandler<AppEnv> {
  return async function maxBody(c, next) {
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

app.use("/v1/*", auth(), rateLimit(), maxBody());
app.use("/metrics", auth());
app.route("/v1/chat/completions", chat);
app.route("/v1/models", models);
app.route("/v1/sessions", sessions);
app.route("/metrics", metrics);
// Signed object URLs for the GPU backend: the grant in the query authorizes, not an API key.
app.route("/storage/v1/objects", storage);
app.notFound(notFound);
app.onError(onError);

export default {
  fetch: (req, env, ctx) => app.fetch(req, env, ctx),
} satisfies ExportedHandler<Bindings>;
