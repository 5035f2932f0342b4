import { runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { Hono } from "hono";
import { describe, expect, it } from "vitest";
import type { AppEnv } from "../../env";
import { onError } from "../../errors";
import { rateLimit } from ".";

function appAt(clock: { t: number }, perKey?: number) {
  const app = new Hono<AppEnv>();
  app.use(async (c, next) => {
    c.set("apiKey", { tenant: "t", name: "n", created: 0, hash: "h" + (perKey ?? "d"), rateLimitPerMinute: perKey });
    await next();
  });
  app.use(rateLimit({ now: () => clock.t }));
  app.get("/", (c) => c.text("ok"));
  app.onError(onError);
  return app;
}

describe("Rate Limit Middleware", () => {
  describe("GET request", () => {
    it("should return 429 with Retry-After to the end of the window", async () => {
      const clock = { t: 1_000 * 60_000 + 15_000 }; // 15 s into a window
      const app = appAt(clock, 3);
      for (let i = 0; i < 3; i++) {
        const res = await app.request("/", {}, env);
        expect(res.status).toBe(200);
        expect(res.headers.get("x-ratelimit-remaining-requests")).toBe(String(2 - i));
      }
      const res = await app.request("/", {}, env);
      expect(res.status).toBe(429);
      expect(res.headers.get("retry-after")).toBe("45");
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe("rate_limit_exceeded");
    });

    it("should admit again in the next window", async () => {
      const clock = { t: 2_000 * 60_000 };
      const app = appAt(clock, 1);
      expect((await app.request("/", {}, env)).status).toBe(200);
      expect((await app.request("/", {}, env)).status).toBe(429);
      clock.t += 60_000;
      expect((await app.request("/", {}, env)).status).toBe(200);
    });

    it("should use RATE_LIMIT_PER_MINUTE when the key has no limit of its own", async () => {
      const clock = { t: 3_000 * 60_000 };
      const app = appAt(clock);
      const limit = Number(env.RATE_LIMIT_PER_MINUTE);
      const res = await app.request("/", {}, env);
      expect(res.headers.get("x-ratelimit-limit-requests")).toBe(String(limit));
    });

    it("should admit exactly the limit when many requests race, across separate app instances", async () => {
      const clock = { t: 4_000 * 60_000 };
      // Two apps stand for two isolates (or locations): they share nothing but the key's Durable Object.
      const apps = [appAt(clock, 5), appAt(clock, 5)];
      const res = await Promise.all(Array.from({ length: 20 }, (_, i) => apps[i % 2]!.request("/", {}, env)));
      const statuses = res.map((r) => r.status);
      expect(statuses.filter((s) => s === 200)).toHaveLength(5);
      expect(statuses.filter((s) => s === 429)).toHaveLength(15);
      const remaining = res.filter((r) => r.status === 200).map((r) => r.headers.get("x-ratelimit-remaining-requests"));
      expect(remaining.sort()).toEqual(["0", "1", "2", "3", "4"]);
    });

    it("should keep the count in the key's Durable Object, not in KV", async () => {
      const clock = { t: 5_000 * 60_000 };
      const app = appAt(clock, 7);
      expect((await app.request("/", {}, env)).status).toBe(200);
      expect((await env.SESSIONS.list({ prefix: "rl:" })).keys).toEqual([]);
      const stub = env.RATE_COUNTERS.get(env.RATE_COUNTERS.idFromName("h7"));
      const rows = await runInDurableObject(stub, (_o, state) => state.storage.sql.exec("SELECT window, n FROM counts").toArray());
      expect(rows).toEqual([{ window: 5_000, n: 1 }]);
    });
  });
});
