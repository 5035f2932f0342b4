import { env } from "cloudflare:workers";
import { Hono } from "hono";
import { describe, expect, it } from "vitest";
import type { AppEnv } from "../../env";
import { onError } from "../../errors";
import { sha256Hex } from "../../crypto";
import { apiKeyKvKey, auth, createApiKey } from ".";

function app(memoryTtlMs = 0) {
  const a = new Hono<AppEnv>();
  a.use(auth({ memoryTtlMs }));
  a.get("/", (c) => c.json({ tenant: c.var.apiKey.tenant, hash: c.var.apiKey.hash }));
  a.onError(onError);
  return a;
}
const bearer = (k: string) => ({ headers: { authorization: `Bearer ${k}` } });

describe("Auth Middleware", () => {
  describe("GET request", () => {
    it("should store only the key's SHA-256 and accept the key", async () => {
      const key = await createApiKey(env.SESSIONS, { tenant: "acme", name: "ci" });
      const hash = await sha256Hex(key);
      const listed = await env.SESSIONS.list({ prefix: "key:" });
      expect(listed.keys.map((k) => k.name)).toContain(apiKeyKvKey(hash));
      expect(JSON.stringify(await env.SESSIONS.get(apiKeyKvKey(hash)))).not.toContain(key);
      const res = await app().request("/", bearer(key), env);
      expect(res.status).toBe(200);
      expect(await res.json()).toEqual({ tenant: "acme", hash });
    });

    it("should accept the scheme in any case", async () => {
      const key = await createApiKey(env.SESSIONS, { tenant: "acme", name: "ci" });
      expect((await app().request("/", { headers: { authorization: `bearer ${key}` } }, env)).status).toBe(200);
    });

    it("should return 401 for missing, malformed and unknown keys", async () => {
      for (const init of [{}, { headers: { authorization: "Bearer" } }, { headers: { authorization: "Token x" } }, bearer("rpk_nope")]) {
        const res = await app().request("/", init, env);
        expect(res.status).toBe(401);
        expect(((await res.json()) as { error: { code: string } }).error.code).toBe("invalid_api_key");
      }
    });

    it("should refuse a key once its record is deleted", async () => {
      const key = await createApiKey(env.SESSIONS, { tenant: "acme", name: "revoked" });
      expect((await app().request("/", bearer(key), env)).status).toBe(200);
      await env.SESSIONS.delete(apiKeyKvKey(await sha256Hex(key)));
      expect((await app().request("/", bearer(key), env)).status).toBe(401);
    });
  });
});
