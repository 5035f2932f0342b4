import { SELF } from "cloudflare:test";
import { env } from "cloudflare:workers";
import fc from "fast-check";
import { beforeAll, describe, expect, it } from "vitest";
import { sha256Hex } from "../src/crypto";
import { chatRequestSchema } from "../src/schemas";
import { acquireLease, commitTurn, getSession, releaseLease } from "../src/sessions/store";
import { api, KEYS, r2Keys } from "./helpers";

// Bad bodies must give a 4xx (never a 500) and must not touch the session they name.

let sessionId = "";

/** Everything stored about the session: the record as raw text, the lease, and the R2 objects. */
async function snapshot() {
  const objects = await Promise.all(
    (await r2Keys(`sessions/${sessionId}/`)).map(async (k) => `${k}:${(await env.BLOBS.head(k))?.etag}`),
  );
  return {
    record: await env.SESSIONS.get(`session:${sessionId}`),
    lease: await env.SESSIONS.get(`lease:${sessionId}`),
    objects,
  };
}

async function post(body: BodyInit, contentType = "application/json") {
  const res = await SELF.fetch("http://x/v1/chat/completions", {
    method: "POST",
    headers: { authorization: `Bearer ${KEYS.unlimited}`, "content-type": contentType },
    body,
  });
  const text = await res.text();
  return { status: res.status, text };
}

function expectClientError(r: { status: number; text: string }) {
  expect(r.status, r.text).toBeGreaterThanOrEqual(400);
  expect(r.status, r.text).toBeLessThan(500);
  const body = JSON.parse(r.text) as { error: { message: string; type: string } };
  expect(typeof body.error.message).toBe("string");
  expect(body.error.type).toBe("invalid_request_error");
}

// A session with a committed turn and a stored chunk, written through the store.
beforeAll(async () => {
  const res = await api("/v1/sessions", { method: "POST" });
  sessionId = ((await res.json()) as { id: string }).id;
  const rec = await getSession(env.SESSIONS, sessionId, "tenant-a");
  const lease = await acquireLease(env, rec);
  const bytes = new TextEncoder().encode("not a real chunk, but stored bytes all the same");
  const after = await commitTurn(
    env.SESSIONS,
    env.BLOBS,
    lease,
    {
      ...rec,
      turns: 1,
      messages: [{ role: "user", content: "hi" }, { role: "assistant", content: "hello" }],
      tokenIds: [1, 2, 3, 4],
    },
    { bytes, tokenStart: 0, tokenEnd: 3, producer: "fuzz", sha256: await sha256Hex(bytes) },
  );
  await releaseLease(env, sessionId, lease, after.revision);
});

const base = () => ({
  model: "smollm2-135m-instruct",
  messages: [{ role: "user", content: "hello" }] as unknown,
  session_id: sessionId,
});

/** One field set to something that may or may not be valid; kept only when the schema rejects it. */
const mutated = fc
  .record({
    field: fc.constantFrom(
      "model",
      "messages",
      "max_tokens",
      "max_completion_tokens",
      "temperature",
      "top_p",
      "seed",
      "stop",
      "stream",
      "stream_options",
      "n",
      "session_id",
      "extra_field",
    ),
    value: fc.oneof(
      fc.jsonValue(),
      fc.double(),
      fc.integer(),
      fc.string(),
      fc.constant(null),
      fc.array(fc.record({ role: fc.string(), content: fc.jsonValue() })),
    ),
    drop: fc.constantFrom("none", "model", "messages"),
  })
  .map(({ field, value, drop }) => {
    const b: Record<string, unknown> = { ...base(), [field]: value };
    if (drop !== "none") delete b[drop];
    return b;
  })
  .filter((b) => !chatRequestSchema.safeParse(b).success);

describe("Fuzzed bad bodies", () => {
  it("should answer 4xx to invalid fields and leave the session as it was", async () => {
    const before = await snapshot();
    expect(before.record).not.toBeNull();
    expect(before.objects).toHaveLength(1);
    await fc.assert(
      fc.asyncProperty(mutated, async (body) => {
        expectClientError(await post(JSON.stringify(body)));
      }),
      { numRuns: 200, seed: 20261128 },
    );
    expect(await snapshot()).toEqual(before);
  });

  it("should answer 400 to arbitrary JSON values and text", async () => {
    const before = await snapshot();
    const bodies = fc.oneof(
      fc.jsonValue().map((v) => JSON.stringify(v) ?? "null"),
      fc.string({ unit: "binary" }),
      fc.uint8Array({ maxLength: 256 }).map((u) => String.fromCharCode(...u)),
    );
    await fc.assert(
      fc.asyncProperty(bodies, async (text) => {
        expectClientError(await post(text));
      }),
      { numRuns: 150, seed: 7 },
    );
    expect(await snapshot()).toEqual(before);
  });

  it("should answer 4xx to raw bytes, odd content types and pathological JSON", async () => {
    const before = await snapshot();
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ maxLength: 512 }),
        fc.constantFrom("application/json", "text/plain", "application/octet-stream", "multipart/form-data; boundary=x"),
        async (bytes, ct) => {
          expectClientError(await post(bytes, ct));
        },
      ),
      { numRuns: 60, seed: 11 },
    );
    const deep = "[".repeat(400_000) + "]".repeat(400_000);
    expectClientError(await post(deep));
    const deepObj = '{"model":"m","messages":' + '{"a":'.repeat(100_000) + "1" + "}".repeat(100_000) + "}";
    expectClientError(await post(deepObj));
    expectClientError(await post(`{"__proto__":{"admin":true},"model":"m","messages":[]}`));
    expectClientError(await post(`{"model":"m","messages":[{"role":"user","content":"\\ud800"}],"max_tokens":1e400}`));
    expect(await snapshot()).toEqual(before);
  });
});
