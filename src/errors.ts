import type { Context, ErrorHandler, NotFoundHandler } from "hono";
import { HTTPException } from "hono/http-exception";
import type { ContentfulStatusCode } from "hono/utils/http-status";

/** OpenAI's error `type` values that this API uses. */
export type ErrorType =
  | "invalid_request_error"
  | "authentication_error"
  | "rate_limit_error"
  | "server_error";

export interface HttpErrorOptions {
  message: string;
  /** OpenAI error type; derived from the status when omitted. */
  type?: ErrorType;
  /** The request field at fault, e.g. `messages[0].content`. */
  param?: string | null;
  /** Machine-readable code, e.g. `session_busy`. */
  code?: string | null;
  /** Extra response headers, e.g. `Retry-After`. */
  headers?: Record<string, string>;
  cause?: unknown;
}

/**
 * The one error the app throws on purpose; `onError` turns it into OpenAI's error body.
 *
 * @example
 * ```ts
 * throw new HttpError(409, { message: "another turn is in flight", code: "session_busy" });
 * // -> 409 {"error":{"message":"another turn is in flight","type":"invalid_request_error","param":null,"code":"session_busy"}}
 * ```
 */
export class HttpError extends Error {
  readonly status: ContentfulStatusCode;
  readonly type: ErrorType;
  readonly param: string | null;
  readonly code: string | null;
  readonly headers: Record<string, string>;

  constructor(status: ContentfulStatusCode, opts: HttpErrorOptions) {
    super(opts.message, { cause: opts.cause });
    this.name = "HttpError";
    this.status = status;
    this.type = opts.type ?? defaultType(status);
    this.param = opts.param ?? null;
    this.code = opts.code ?? null;
    this.headers = opts.headers ?? {};
  }

  /** The body OpenAI clients parse: `{ error: { message, type, param, code } }`. */
  toBody() {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

function defaultType(status: number): ErrorType {
  if (status === 401) return "authentication_error";
  if (status === 429) return "rate_limit_error";
  if (status >= 500) return "server_error";
  return "invalid_request_error";
}

function errorResponse(c: Context, err: HttpError): Response {
  for (const [k, v] of Object.entries(err.headers)) c.header(k, v);
  return c.json(err.toBody(), err.status);
}

/** onError: HttpError -> its JSON; anything else is logged and becomes a 500 that reveals nothing. */
export const onError: ErrorHandler = (err, c) => {
  if (err instanceof HttpError) return errorResponse(c, err);
  // Thrown by Hono's own middleware; its message is meant for the client.
  if (err instanceof HTTPException && err.status < 500)
    return errorResponse(c, new HttpError(err.status, { message: err.message || "Bad request" }));
  console.error("unhandled error", c.req.method, c.req.path, err);
  return errorResponse(c, new HttpError(500, { message: "Internal server error" }));
};

export const notFound: NotFoundHandler = (c) =>
  errorResponse(
    c,
    new HttpError(404, { message: `No route for ${c.req.method} ${c.req.path}`, code: "not_found" }),
  );
