// The SSRF rules: a table of addresses and name tricks, checked by the policy itself and through
// the API (an endpoint with such a URL is refused), and redirect tricks against the real receiver
// process (redirects followed here, as WEBHOOK_MAX_REDIRECTS > 0 would allow). Names resolve
// through the receiver's DNS-over-HTTPS test zone (test/receiver/server.mjs).
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { api, errorOf } from "../../test/helpers";
import { configure, receiverName, receiverUrl, received } from "../../test/webhook-helpers";
import { attempt } from "./deliver";
import { newWebhookSecret } from "./secrets";
import ssrfCases from "../../test/fixtures/ssrf-cases.json";
import { checkOutboundUrl, isPublicAddress, outboundPolicy } from "./ssrf";

const RECEIVER = (env as unknown as { TEST_RECEIVER_URL: string }).TEST_RECEIVER_URL;
const otherPort = Number(new URL(RECEIVER).port) === 9 ? 10 : 9;

/** [url, why it must be refused] (shared with bench/webhooks_bench.mjs). */
export const REFUSED: [string, string][] = (ssrfCases.refused as [string, string][]).map(([u, why]) => [u.replace("{other_port}", String(otherPort)), why]);

const ALLOWED = ["https://public.test/hook", "https://8.8.8.8/", "https://[2606:4700:4700::1111]/dns-query", receiverUrl("x")];

describe("SSRF rules", () => {
  const policy = outboundPolicy(env);

  it(`should refuse all ${REFUSED.length} addresses and name tricks of the table`, async () => {
    expect(REFUSED.length).toBeGreaterThanOrEqual(20);
    for (const [url, why] of REFUSED) expect((await checkOutboundUrl(url, policy)).ok, `${url}: ${why}`).toBe(false);
  });

  it("should allow public addresses and the allow-listed test receiver", async () => {
    for (const url of ALLOWED) expect(await checkOutboundUrl(url, policy), url).toMatchObject({ ok: true });
    expect(isPublicAddress("93.184.215.14")).toBe(true);
    expect(isPublicAddress("::ffff:93.184.215.14")).toBe(false);
  });

  it("should refuse each refused URL as a webhook endpoint with a 400 naming the url", async () => {
    for (const [url, why] of REFUSED) {
      const e = await errorOf(await api("/v1/webhook_endpoints", { body: { url } }));
      expect(e, `${url}: ${why}`).toMatchObject({ status: 400, param: "url", code: "url_not_allowed" });
    }
  });

  describe("redirects (followed here, checked at every hop)", () => {
    const secret = newWebhookSecret();
    const payload = JSON.stringify({ id: "evt_1", object: "event", type: "chat.completion.completed", created_at: 1, data: { id: "job_1" } });
    const send = (url: string) => attempt({ url, secrets: [secret], msgId: "evt_1", payload }, { policy, timeoutMs: 1500, maxRedirects: 3 });
    const tricks: [string, string][] = [
      ["http://169.254.169.254/latest/meta-data/", "to the metadata address"],
      ["https://[::1]/admin", "to IPv6 loopback over https"],
      [`http://127.0.0.1:${otherPort}/`, "to loopback on another port"],
      ["https://private.test/", "to a name that resolves privately"],
      ["gopher://public.test/", "to another scheme"],
    ];
    for (const [to, why] of tricks)
      it(`should refuse a redirect ${why}`, async () => {
        const name = receiverName("ssrf-redirect");
        await configure(name, { secrets: [secret], mode: "redirect", status: 307, redirectTo: to });
        const o = await send(receiverUrl(name));
        expect(o.status).toBeNull();
        expect(o.error).toMatch(/refused by the SSRF rules/);
        expect((await received(name)).requests).toHaveLength(1);
      });

    it("should follow a 307 to an allowed URL, and a chain no longer than the limit", async () => {
      const end = receiverName("ssrf-end");
      await configure(end, { secrets: [secret] });
      let next = receiverUrl(end);
      for (let i = 0; i < 3; i++) {
        const hop = receiverName("ssrf-hop");
        await configure(hop, { secrets: [secret], mode: "redirect", status: 308, redirectTo: next });
        next = receiverUrl(hop);
      }
      expect(await send(next)).toMatchObject({ status: 200, error: null });
      expect((await received(end)).requests).toEqual([expect.objectContaining({ verified: true, id: "evt_1" })]);
      // One hop more than allowed: the last 3xx is the outcome, and the end is not reached again.
      const extra = receiverName("ssrf-hop");
      await configure(extra, { secrets: [secret], mode: "redirect", status: 307, redirectTo: next });
      expect(await send(receiverUrl(extra))).toMatchObject({ status: 308, error: expect.stringMatching(/not followed/) });
      expect((await received(end)).requests).toHaveLength(1);
    });
  });
});
