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
  | "EDGE_STEP_BUDGET_MS"
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
  /** Upper bound on a LoRA adapter upload in bytes (default: the base model's largest valid adapter). */
  ADAPTER_MAX_BYTES?: string;
  /** Most ms one light step may compute on the edge model (src/edge-model/budget.ts; default 25 000). */
  EDGE_STEP_BUDGET_MS?: string;
  /** How the GPU backend reaches session chunks (docs/storage-grants.md): "worker" (this Worker's
   *  signed streaming route), "r2-s3" (R2 presigned URLs) or empty (the edge inlines chunk bytes). */
  STORAGE_GRANTS?: string;
  /** "worker" grants: this Worker's origin as the backend reaches it, e.g. http://127.0.0.1:8787. */
  STORAGE_GRANT_ORIGIN?: string;
  /** "worker" grants: HMAC key of the grant signatures; only the edge holds it (a secret). */
  STORAGE_GRANT_SECRET?: string;
  /** "r2-s3" grants: https://<account>.r2.cloudflarestorage.com, the bucket, and an R2 API token's keys (secrets). */
  R2_S3_ENDPOINT?: string;
  R2_S3_BUCKET?: string;
  R2_ACCESS_KEY_ID?: string;
  R2_SECRET_ACCESS_KEY?: string;
  /** One SessionLease Durable Object per session id: the turn lease and the committed revision. */
  SESSION_LEASES: DurableObjectNamespace<SessionLease>;
  /** One RateCounter Durable Object per API key hash. */
  RATE_COUNTERS: DurableObjectNamespace<RateCounter>;
  /** One TenantStore Durable Object per tenant: jobs, webhook endpoints, events, deliveries, hooks. */
  TENANTS: DurableObjectNamespace<TenantStore>;
  JOBS: Queue<JobMessage>;
  DELIVERIES: Queue<DeliveryMessage>;
  DEAD_LETTERS: Queue<DeliveryMessage | JobMessage>;
  /** Resume policy: "auto" (default, from measured rates) or an override: "recompute", "raw", "coded", "split". */
  RESUME_POLICY?: string;
  /** What to store of each turn, overriding the policy: "none", "raw", "coded" or "both". */
  RESUME_STORE?: string;
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
