import { SELF } from "cloudflare:test";
import { env } from "cloudflare:workers";

/** API keys seeded by test/setup/keys.ts: two tenants and one key with a tiny rate limit. */
export const KEYS = {
  a: "rpk_test_tenant_a_0001",
  a2: "rpk_test_tenant_a_0002",
  b: "rpk_test_tenant_b_0001",
  limited: "rpk_test_limited_0001",
  /** tenant-a, no rate limit: for tests that send hundreds of requests. */
  unlimited: "rpk_test_unlimited_0001",
} as const;

export const BASE = "http://reprise.test";

/** `SELF.fetch` with a bearer key and JSON body. */
export function api(
  path: string,
  init: { method?: string; body?: unknown; key?: string | null; raw?: BodyInit; headers?: Record<string, string> } = {},
) {
  const headers: Record<string, string> = { ...init.headers };
  const key = init.key === undefined ? KEYS.a : init.key;
  if (key !== null) headers.authorization = `Bearer ${key}`;
  let body: BodyInit | undefined = init.raw;
  if (init.body !== undefined) {
    headers["content-type"] = "application/json";
    body = JSON.stringify(init.body);
  }
  return SELF.fetch(BASE + path, { method: init.method ?? (body === undefined ? "GET" : "POST"), headers, body });
}

/** Status then the OpenAI error body. */
export async function errorOf(res: Response) {
  const body = (await res.json()) as { error: { message: string; type: string; param: string | null; code: string | null } };
  return { status: res.status, ...body.error };
}

/** Every R2 key under a prefix. */
export async function r2Keys(prefix: string): Promise<string[]> {
  const out: string[] = [];
  let cursor: string | undefined;
  do {
    const page = await env.BLOBS.list({ prefix, cursor });
    out.push(...page.objects.map((o) => o.key));
    cursor = page.truncated ? page.cursor : undefined;
  } while (cursor);
  return out.sort();
}
