/**
 * Bindings and per-request variables of the Worker.
 *
 * `Env` comes from `wrangler types` (worker-configuration.d.ts). Its var types depend on the flags
 * it was generated with (literal types under `--strict-vars`), so the vars are restated here as
 * plain strings, and the one secret (`GPU_BACKEND_SECRET`, set with `wrangler secret put` or
 * `--var`, never in wrangler.toml) is added.
 */
import type { RateCounter } from "./durable/rate-counter";
import type { SessionLease } from "./durable/session-lease";
import type { TenantStore } from "./durable/tenant-store";
import type { DeliveryMessage, JobMessage } from "./jobs/messages";

export type Bindings = Omit<
  Env,
  | "GPU_BACKEND_URL"
  | "EDGE_MODEL_KEY"
  | "RATE_LIMIT_PER_MINUTE"
  | "MAX_BODY_BYTES"
  | "SESSION_LEASES"
  | "RATE_COUNTERS"
  | "TENANTS"
  | "JOBS"
  | "DELIVERIES"
  | "DEAD_LETTERS"
  | `WEBHOOK_${string}`
> & {
  /** Base URL of the GPU backend; empty means every step runs on the edge model. */
  GPU_BACKEND_URL: string;
  /** R2 key of the edge ONNX model in BLOBS. */
  EDGE_MODEL_KEY: string;
  /** Default per-key request limit; an API key record may carry its own. */
  RATE_LIMIT_PER_MINUTE: string;
  /** Largest accepted request body in bytes (413 above it). */
  MAX_BODY_BYTES: string;
  /** Shared HMAC secret for the GPU backend (hex or text). */
  GPU_BACKEND_SECRET?: string;
  /** Models the GPU backend serves, as `public-id=backend-preset` pairs, comma-separated
   *  (default `smollm2-135m-instruct=smollm2-135m`: the edge model's id, in BF16 on the GPU). */
  GPU_BACKEND_MODELS?: string;
  /** New prompt tokens above which a step goes to the GPU backend (default 512). */
  GPU_PREFILL_THRESHOLD?: string;
  /** One SessionLease Durable Object per session id: the turn lease and the committed revision. */
  SESSION_LEASES: DurableObjectNamespace<SessionLease>;
  /** One RateCounter Durable Object per API key hash. */
  RATE_COUNTERS: DurableObjectNamespace<RateCounter>;
  /** One TenantStore Durable Object per tenant: jobs, webhook endpoints, events, deliveries, hooks. */
  TENANTS: DurableObjectNamespace<TenantStore>;
  JOBS: Queue<JobMessage>;
  DELIVERIES: Queue<DeliveryMessage>;
  DEAD_LETTERS: Queue<DeliveryMessage | JobMessage>;
} & WebhookVars;

/** Webhook settings (wrangler.toml [vars], docs/webhooks.md) and the secret that encrypts webhook secrets. */
export interface WebhookVars {
  /** Seconds before each delivery attempt, comma-separated; its length is the number of attempts. */
  WEBHOOK_RETRY_SCHEDULE?: string;
  /** Jitter as a fraction of each delay (0.2: ±20%). */
  WEBHOOK_RETRY_JITTER?: string;
  /** Time allowed for one attempt, response headers and body, in ms (default 15000). */
  WEBHOOK_TIMEOUT_MS?: string;
  /** `host` or `host:port` entries exempt from the SSRF address rules and allowed over http. */
  WEBHOOK_ALLOW_HOSTS?: string;
  /** Redirects a delivery follows, each target checked again (default 0: a 3xx is a failed attempt). */
  WEBHOOK_MAX_REDIRECTS?: string;
  /** DNS-over-HTTPS JSON resolver that outbound hostnames are resolved with before each attempt. */
  WEBHOOK_DNS_URL?: string;
  /** Key (any string of >= 32 characters; a Worker secret) from which the key that encrypts webhook secrets at rest is derived. */
  WEBHOOK_SECRETS_KEY?: string;
}

/** The API key record that authenticated this request (stored in KV under `key:<sha256>`). */
export interface ApiKeyRecord {
  tenant: string;
  name: string;
  created: number;
  /** Optional per-key override of RATE_LIMIT_PER_MINUTE. */
  rateLimitPerMinute?: number;
}

export type AppEnv = {
  Bindings: Bindings;
  Variables: {
    /** The authenticated key: its record and the hex SHA-256 that names it. */
    apiKey: ApiKeyRecord & { hash: string };
  };
};
