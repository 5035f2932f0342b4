// Signatures against the official `standardwebhooks` package (an independent implementation:
// our signer is src/crypto.ts on Web Crypto, theirs is fast-sha256), secrets at rest, and the
// retry schedule's arithmetic.
import { describe, expect, it } from "vitest";
import { Webhook } from "standardwebhooks";
import { DEFAULT_SCHEDULE_S, parseSchedule, retryAfterMs, retryDelayMs, verdict } from "./schedule";
import { newWebhookSecret, openSecret, sealSecret, secretKeyBytes } from "./secrets";
import { signature, verifyWebhook, webhookHeaders } from "./sign";

const KEY = "k".repeat(40);

describe("Standard Webhooks signatures", () => {
  it("should match the spec's published example", async () => {
    const h = await webhookHeaders(["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, '{"test": 2432232314}');
    expect(h["webhook-signature"]).toBe("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
  });

  it("should produce what the official library produces, and verify with it, for random secrets and bodies", async () => {
    for (let i = 0; i < 50; i++) {
      const secret = newWebhookSecret();
      const body = JSON.stringify({ i, s: "é✓".repeat(i), n: Math.random() });
      const ts = Math.floor(Date.now() / 1000) - i;
      const lib = new Webhook(secret);
      expect(await signature(secret, `evt_${i}`, ts, body)).toBe(lib.sign(`evt_${i}`, new Date(ts * 1000), body));
      const headers = await webhookHeaders([secret, newWebhookSecret()], `evt_${i}`, ts, body);
      expect(lib.verify(body, headers)).toEqual(JSON.parse(body));
    }
  });

  it("should verify inbound requests signed by the library, and refuse stale, altered and unsigned ones", async () => {
    const secret = newWebhookSecret();
    const lib = new Webhook(secret);
    const body = '{"hello":"world"}';
    const now = Date.now();
    const sign = (id: string, t: number, b = body) => new Headers({ "webhook-id": id, "webhook-timestamp": String(Math.floor(t / 1000)), "webhook-signature": lib.sign(id, new Date(t), b) });
    const enc = (s: string) => new TextEncoder().encode(s);
    expect(await verifyWebhook(secret, sign("m1", now), enc(body), now)).toMatchObject({ ok: true, msgId: "m1" });
    expect(await verifyWebhook(secret, sign("m1", now - 301_000), enc(body), now)).toEqual({ ok: false, reason: "stale_timestamp" });
    expect(await verifyWebhook(secret, sign("m1", now + 301_000), enc(body), now)).toEqual({ ok: false, reason: "stale_timestamp" });
    expect(await verifyWebhook(secret, sign("m1", now), enc(body + " "), now)).toEqual({ ok: false, reason: "bad_signature" });
    expect(await verifyWebhook(newWebhookSecret(), sign("m1", now), enc(body), now)).toEqual({ ok: false, reason: "bad_signature" });
    expect(await verifyWebhook(secret, new Headers({ "webhook-id": "m1" }), enc(body), now)).toEqual({ ok: false, reason: "missing_headers" });
  });
});

describe("webhook secrets", () => {
  it("should be whsec_ and 32 random bytes", () => {
    const s = newWebhookSecret();
    expect(secretKeyBytes(s)).toHaveLength(32);
    expect(newWebhookSecret()).not.toBe(s);
    expect(secretKeyBytes("whsec_" + btoa("short"))).toBeNull();
  });

  it("should be stored sealed: round trip, and refused under another id, another key, or altered", async () => {
    const s = newWebhookSecret();
    const sealed = await sealSecret(KEY, "we_1", s);
    expect(sealed).not.toContain(s.slice(6));
    expect(await openSecret(KEY, "we_1", sealed)).toBe(s);
    await expect(openSecret(KEY, "we_2", sealed)).rejects.toThrow();
    await expect(openSecret("j".repeat(40), "we_1", sealed)).rejects.toThrow();
    const bad = sealed.slice(0, -4) + (sealed.endsWith("AAA=") ? "BBB=" : "AAA=");
    await expect(openSecret(KEY, "we_1", bad)).rejects.toThrow();
    await expect(sealSecret("short", "we_1", s)).rejects.toMatchObject({ status: 503, code: "webhooks_not_configured" });
  });
});

describe("retry schedule", () => {
  it("should default to the spec's example: ten attempts over more than 72 hours", () => {
    expect(parseSchedule(undefined)).toEqual([0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400]);
    expect(DEFAULT_SCHEDULE_S.reduce((a, b) => a + b, 0)).toBeGreaterThan(72 * 3600);
    expect(() => parseSchedule("0,-1")).toThrow();
  });

  it("should jitter each delay within ±jitter and stop after the last attempt", () => {
    const s = parseSchedule("0,5,300");
    expect(retryDelayMs(s, 0.2, 0)).toBe(0);
    expect(retryDelayMs(s, 0.2, 1, () => 0)).toBe(4000);
    expect(retryDelayMs(s, 0.2, 1, () => 1)).toBe(6000);
    for (let i = 0; i < 100; i++) {
      const d = retryDelayMs(s, 0.2, 2)!;
      expect(d).toBeGreaterThanOrEqual(240_000);
      expect(d).toBeLessThanOrEqual(360_000);
    }
    expect(retryDelayMs(s, 0.2, 3)).toBeNull();
  });

  it("should read answers as the spec says", () => {
    expect([200, 204, 299].map(verdict)).toEqual(["delivered", "delivered", "delivered"]);
    expect([301, 307, 400, 404, 429, 500, 503, null].map(verdict).every((v) => v === "retry")).toBe(true);
    expect(verdict(410)).toBe("disable");
    expect(retryAfterMs(503, "7")).toBe(7000);
    expect(retryAfterMs(429, new Date(Date.now() + 60_000).toUTCString())).toBeGreaterThan(58_000);
    expect(retryAfterMs(500, "7")).toBeNull();
    expect(retryAfterMs(503, "soon")).toBeNull();
    expect(retryAfterMs(503, String(10 * 86400))).toBe(86400_000);
  });
});
