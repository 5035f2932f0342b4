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
import { checkOutboundUrl, isPublicAddress, outboundPolicy } from "./ssrf";

const RECEIVER = (env as unknown as { TEST_RECEIVER_URL: string }).TEST_RECEIVER_URL;
const otherPort = Number(new URL(RECEIVER).port) === 9 ? 10 : 9;

/** [url, why it must be refused]. */
export const REFUSED: [string, string][] = [
  ["http://public.test/hook", "plain http"],
  ["ftp://public.test/hook", "another scheme"],
  ["https://user:pass@public.test/hook", "credentials in the URL"],
  ["https://127.0.0.1/", "loopback"],
  ["https://127.45.6.7/", "loopback /8"],
  ["https://0.0.0.0/", "unspecified"],
  ["https://[::1]/", "IPv6 loopback"],
  ["https://[::]/", "IPv6 unspecified"],
  ["https://10.0.0.5/", "private 10/8"],
  ["https://172.16.3.4/", "private 172.16/12"],
  ["https://192.168.1.1/", "private 192.168/16"],
  ["https://169.254.169.254/latest/meta-data/", "link-local: the cloud metadata address"],
  ["https://100.64.0.1/", "CGNAT 100.64/10"],
  ["https://100.100.100.200/", "CGNAT: Alibaba's metadata address"],
  ["https://[fe80::1]/", "IPv6 link-local"],
  ["https://[fd00:ec2::254]/", "IPv6 unique-local: AWS's IPv6 metadata address"],
  ["https://[::ffff:127.0.0.1]/", "IPv4-mapped IPv6 of loopback"],
  ["https://[::ffff:a9fe:a9fe]/", "IPv4-mapped IPv6 of 169.254.169.254, in hex"],
  ["https://[64:ff9b::a00:1]/", "NAT64 of 10.0.0.1"],
  ["https://[2002:a00:1::]/", "6to4 of 10.0.0.1"],
  ["https://0x7f000001/", "loopback as one hex number"],
  ["https://2130706433/", "loopback as one decimal number"],
  ["https://0177.0.0.1/", "loopback in octal"],
  ["https://127.1/", "loopback, short form"],
  ["https://224.0.0.1/", "multicast"],
  ["https://255.255.255.255/", "broadcast"],
  ["https://192.0.2.10/", "reserved (TEST-NET-1)"],
  ["https://localhost/", "localhost"],
  ["https://api.localhost/", "*.localhost"],
  ["https://metadata.google.internal/computeMetadata/v1/", "*.internal: GCP metadata"],
  ["https://printer.local/", "*.local"],
  ["https://intranet/", "a single-label name"],
  ["https://loopback.test/", "a name that resolves to loopback"],
  ["https://private.test/", "a name that resolves to a private address"],
  ["https://metadata.test/", "a name that resolves to the metadata address"],
  ["https://mixed.test/", "a name with one public and one loopback address"],
  ["https://ula.test/", "a name with a unique-local AAAA"],
  ["https://mapped.test/", "a name with an IPv4-mapped AAAA"],
  ["https://cgnat.test/", "a name in CGNAT space"],
  ["https://cname.test/", "a CNAME to a private name"],
  ["https://nxdomain.test/", "a name that does not resolve"],
  [`http://127.0.0.1:${otherPort}/`, "loopback on a port the allow-list does not name"],
];

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
