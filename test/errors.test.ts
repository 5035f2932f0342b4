import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import worker from "../src/index";
import { api, BASE, errorOf, KEYS } from "./helpers";

const valid = { model: "smollm2-135m-instruct", messages: [{ role: "user", content: "hi" }] };

describe("Error responses", () => {
  describe("401 authentication", () => {
    it("should return 401 without an Authorization header", async () => {
      const res = await api("/v1/models", { key: null });
      expect(res.status).toBe(401);
      expect(res.headers.get("www-authenticate")).toMatch(/^Bearer/);
      const e = await errorOf(res);
      expect(e).toMatchObject({ type: "authentication_error", code: "invalid_api_key", param: null });
    });
    it("should return 401 for an unknown key", async () => {
      const e = await errorOf(await api("/v1/models", { key: "rpk_not_a_key" }));
      expect(e.status).toBe(401);
      expect(e.code).toBe("invalid_api_key");
    });
    it("should return 401 for a non-bearer scheme", async () => {
      const { SELF } = await import("cloudflare:test");
      const res = await SELF.fetch("http://x/v1/models", { headers: { authorization: `Basic ${KEYS.a}` } });
      expect(res.status).toBe(401);
    });
  });

  describe("400 bad requests", () => {
    it("should return 400 invalid_json for a body that is not JSON", async () => {
      const e = await errorOf(await api("/v1/chat/completions", { raw: "{not json" }));
      expect(e).toMatchObject({ status: 400, type: "invalid_request_error", code: "invalid_json", param: null });
    });
    it("should return 400 for a JSON body that is not an object", async () => {
      const e = await errorOf(await api("/v1/chat/completions", { body: [1, 2] }));
      expect(e.status).toBe(400);
    });
    const cases: [string, object, string][] = [
      ["missing model", { messages: valid.messages }, "model"],
      ["empty messages", { ...valid, messages: [] }, "messages"],
      ["bad role", { ...valid, messages: [{ role: "robot", content: "x" }] }, "messages[0].role"],
      ["content not string", { ...valid, messages: [{ role: "user", content: 5 }] }, "messages[0].content"],
      ["temperature > 2", { ...valid, temperature: 3 }, "temperature"],
      ["top_p = 0", { ...valid, top_p: 0 }, "top_p"],
      ["max_tokens = 0", { ...valid, max_tokens: 0 }, "max_tokens"],
      ["max_completion_tokens float", { ...valid, max_completion_tokens: 1.5 }, "max_completion_tokens"],
      ["seed string", { ...valid, seed: "1" }, "seed"],
      ["stop of 5", { ...valid, stop: ["a", "b", "c", "d", "e"] }, "stop"],
      ["stream not bool", { ...valid, stream: "yes" }, "stream"],
      ["stream_options without stream", { ...valid, stream_options: { include_usage: true } }, "stream_options"],
      ["stream_options bad field", { ...valid, stream: true, stream_options: { x: 1 } }, "stream_options.x"],
      ["unknown field", { ...valid, frobnicate: true }, "frobnicate"],
      ["n = 2", { ...valid, n: 2 }, "n"],
      ["bad session_id", { ...valid, session_id: "../etc" }, "session_id"],
    ];
    for (const [name, body, param] of cases)
      it(`should return 400 naming '${param}' for ${name}`, async () => {
        const e = await errorOf(await api("/v1/chat/completions", { body }));
        expect(e.status).toBe(400);
        expect(e.type).toBe("invalid_request_error");
        expect(e.param).toBe(param);
      });
  });

  describe("400 edge budget", () => {
    // With no GPU backend, a light step that would compute longer than EDGE_STEP_BUDGET_MS is refused
    // before it starts. A budget of 1 ms fits not even the prefill, so no model is loaded here.
    const ctx = { waitUntil() {}, passThroughOnException() {}, props: {} } as unknown as ExecutionContext;
    const withBudget = (budget: string, body: object) =>
      worker.fetch(
        new Request(BASE + "/v1/chat/completions", {
          method: "POST",
          headers: { authorization: `Bearer ${KEYS.unlimited}`, "content-type": "application/json" },
          body: JSON.stringify(body),
        }) as Request<unknown, IncomingRequestCfProperties>,
        { ...env, GPU_BACKEND_URL: "", EDGE_STEP_BUDGET_MS: budget } as typeof env,
        ctx,
      );
    for (const [name, body] of [
      ["an explicit max_tokens", { ...valid, max_tokens: 8 }],
      ["max_tokens left unset", valid],
      ["a streamed request", { ...valid, stream: true, max_tokens: 8 }],
    ] as const)
      it(`should return 400 edge_budget_exceeded for ${name}`, async () => {
        const e = await errorOf(await withBudget("1", body));
        expect(e).toMatchObject({ status: 400, type: "invalid_request_error", code: "edge_budget_exceeded", param: "messages" });
        expect(e.message).toMatch(/budget/);
      });
    it("should leave a session as it was and its lease free after a refused turn", async () => {
      const created = await api("/v1/sessions", { method: "POST", key: KEYS.unlimited });
      const { id } = (await created.json()) as { id: string };
      for (let i = 0; i < 2; i++) {
        // A leaked lease would make the second attempt answer 409 session_busy.
        const e = await errorOf(await withBudget("1", { ...valid, session_id: id }));
        expect(e).toMatchObject({ status: 400, code: "edge_budget_exceeded" });
      }
      const rec = (await (await api(`/v1/sessions/${id}`, { key: KEYS.unlimited })).json()) as { turns: number };
      expect(rec.turns).toBe(0);
    });
  });

  describe("404 not found", () => {
    it("should return 404 in OpenAI's shape for an unknown route", async () => {
      const e = await errorOf(await api("/v1/nope"));
      expect(e).toMatchObject({ status: 404, code: "not_found" });
    });
    it("should return 404 model_not_found for a model nobody serves", async () => {
      const e = await errorOf(await api("/v1/chat/completions", { body: { ...valid, model: "gpt-9" } }));
      expect(e).toMatchObject({ status: 404, param: "model", code: "model_not_found" });
    });
    it("should return 404 for an unknown session", async () => {
      const e = await errorOf(await api("/v1/sessions/sess_missing"));
      expect(e).toMatchObject({ status: 404, code: "session_not_found" });
    });
  });

  describe("413 body too large", () => {
    it("should return 413 when Content-Length exceeds MAX_BODY_BYTES", async () => {
      const big = { ...valid, messages: [{ role: "user", content: "x".repeat(1_100_000) }] };
      const e = await errorOf(await api("/v1/chat/completions", { body: big }));
      expect(e).toMatchObject({ status: 413, code: "request_too_large" });
    });
    it("should return 413 for a streamed body without Content-Length", async () => {
      const { SELF } = await import("cloudflare:test");
      const part = new TextEncoder().encode("x".repeat(64 * 1024));
      let sent = 0;
      const body = new ReadableStream<Uint8Array>({
        pull(ctl) {
          if (sent++ < 20) ctl.enqueue(part);
          else ctl.close();
        },
      });
      const res = await SELF.fetch("http://x/v1/chat/completions", {
        method: "POST",
        headers: { authorization: `Bearer ${KEYS.a}`, "transfer-encoding": "chunked" },
        body,
        // @ts-expect-error workerd wants duplex for a streamed body
        duplex: "half",
      });
      expect(res.status).toBe(413);
    });
  });

  describe("429 rate limit", () => {
    it("should return 429 with Retry-After once the per-key limit is used up", async () => {
      // The limit is 2 per minute-window; a window boundary may fall between requests, so allow
      // up to two windows' worth of successes before the 429.
      let ok = 0;
      let res = await api("/v1/models", { key: KEYS.limited });
      while (res.status === 200 && ok < 4) {
        ok++;
        res = await api("/v1/models", { key: KEYS.limited });
      }
      expect(ok).toBeGreaterThanOrEqual(2);
      expect(res.status).toBe(429);
      const retry = Number(res.headers.get("retry-after"));
      expect(retry).toBeGreaterThanOrEqual(1);
      expect(retry).toBeLessThanOrEqual(60);
      const e = await errorOf(res);
      expect(e).toMatchObject({ type: "rate_limit_error", code: "rate_limit_exceeded" });
      // Other keys are not affected.
      expect((await api("/v1/models", { key: KEYS.b })).status).toBe(200);
    });
  });
});
