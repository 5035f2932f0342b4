/**
 * Where a webhook may be sent (docs/webhooks.md, "SSRF rules").
 *
 * An outbound URL must be https, carry no credentials, and name a host whose every address is
 * public unicast: loopback, private (RFC 1918), link-local (169.254/16, the cloud metadata
 * address among them), CGNAT (100.64/10), unique-local and IPv4-mapped/translated IPv6
 * (::ffff:0:0/96, 64:ff9b::/96, 2002::/16, 2001::/32), multicast, reserved and unspecified
 * addresses are refused. IP classification is ipaddr.js's (`range() === "unicast"`); the URL
 * parser (WHATWG) has already turned `0x7f.1`, `2130706433` and `0177.0.0.1` into `127.0.0.1`.
 * Names are resolved with DNS-over-HTTPS (A and AAAA; any refused address refuses the name), and
 * names that are local by definition (`localhost`, `*.localhost`, `*.local`, `*.internal`,
 * `*.home.arpa`, single labels) are refused without a lookup.
 *
 * The check runs when an endpoint is created, before every attempt, and on every redirect target
 * (redirects are not followed unless WEBHOOK_MAX_REDIRECTS allows it).
 *
 * Entries in WEBHOOK_ALLOW_HOSTS (`host` or `host:port`) skip the address rules and may use http:
 * that is how local tests reach a receiver on 127.0.0.1. Limit: a Worker's fetch resolves the name
 * again, so a DNS answer that changes between the check and the request (rebinding) is not caught
 * by the check alone; on Cloudflare the fetch itself cannot reach private networks.
 */
import ipaddr from "ipaddr.js";

export type UrlVerdict = { ok: true; url: URL } | { ok: false; reason: string };

export interface OutboundPolicy {
  /** `host` or `host:port` (lowercase; IPv6 in brackets) exempt from the rules. */
  allowHosts: string[];
  /** Addresses of a hostname (A and AAAA); throws or returns [] when it does not resolve. */
  resolve: (host: string) => Promise<string[]>;
}

const LOCAL_SUFFIXES = [".localhost", ".local", ".internal", ".home.arpa", ".localdomain"];

/** Parses the WEBHOOK_ALLOW_HOSTS setting. */
export function parseAllowHosts(spec: string | undefined): string[] {
  return (spec ?? "")
    .split(",")
    .map((s) => s.trim().toLowerCase())
    .filter(Boolean);
}

/** True for an address that may receive webhooks: public unicast, IPv4 or IPv6. */
export function isPublicAddress(addr: string): boolean {
  if (!ipaddr.isValid(addr)) return false;
  const ip = ipaddr.parse(addr);
  return ip.range() === "unicast";
}

/** The literal IP of a URL hostname (`[::1]` -> `::1`), or null for a name. */
function literalIp(hostname: string): string | null {
  const h = hostname.startsWith("[") && hostname.endsWith("]") ? hostname.slice(1, -1) : hostname;
  if (ipaddr.IPv4.isValidFourPartDecimal(h)) return h;
  return h.includes(":") && ipaddr.IPv6.isValid(h) ? h : null;
}

/**
 * Checks `raw` (absolute, or relative to `base` for a redirect's Location) against the rules.
 *
 * @example
 * ```ts
 * await checkOutboundUrl("https://169.254.169.254/latest/meta-data/", policy) // { ok: false, reason: "address 169.254.169.254 is linkLocal" }
 * ```
 */
export async function checkOutboundUrl(raw: string, policy: OutboundPolicy, base?: string): Promise<UrlVerdict> {
  let url: URL;
  try {
    url = new URL(raw, base);
  } catch {
    return { ok: false, reason: "not a valid absolute URL" };
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") return { ok: false, reason: `scheme ${url.protocol} is not allowed` };
  if (url.username || url.password) return { ok: false, reason: "URLs with credentials are not allowed" };
  const host = url.hostname.toLowerCase();
  if (policy.allowHosts.includes(url.host.toLowerCase()) || policy.allowHosts.includes(host)) return { ok: true, url };
  if (url.protocol !== "https:") return { ok: false, reason: "only https URLs are allowed" };
  const ip = literalIp(host);
  if (ip !== null) return addressVerdict(url, [ip]);
  const name = host.endsWith(".") ? host.slice(0, -1) : host;
  if (name === "localhost" || !name.includes(".") || LOCAL_SUFFIXES.some((s) => name.endsWith(s)))
    return { ok: false, reason: `host ${name} is a local name` };
  let addrs: string[];
  try {
    addrs = await policy.resolve(name);
  } catch (err) {
    return { ok: false, reason: `host ${name} could not be resolved (${err instanceof Error ? err.message : String(err)})` };
  }
  if (!addrs.length) return { ok: false, reason: `host ${name} does not resolve` };
  return addressVerdict(url, addrs);
}

function addressVerdict(url: URL, addrs: string[]): UrlVerdict {
  for (const a of addrs) {
    if (!ipaddr.isValid(a)) return { ok: false, reason: `address ${a} is not an IP address` };
    const ip = ipaddr.parse(a);
    if (ip.range() !== "unicast") return { ok: false, reason: `address ${a} is ${ip.range()}` };
  }
  return { ok: true, url };
}

/** Isolate-local answers, so a burst of deliveries to one host asks the resolver once a minute. */
const dnsCache = new Map<string, { addrs: string[]; until: number }>();
const DNS_CACHE_MS = 60_000;
const DNS_CACHE_MAX = 1024;

/**
 * A resolver over DNS-over-HTTPS' JSON API (`?name=&type=A`, `accept: application/dns-json`),
 * A and AAAA; CNAME chains are followed by the resolver, so only address answers are read.
 */
export function dohResolver(endpoint: string, fetcher: typeof fetch = fetch): (host: string) => Promise<string[]> {
  return async (host) => {
    const now = Date.now();
    const hit = dnsCache.get(endpoint + " " + host);
    if (hit && hit.until > now) return hit.addrs;
    const ask = async (type: "A" | "AAAA") => {
      const u = new URL(endpoint);
      u.searchParams.set("name", host);
      u.searchParams.set("type", type);
      const res = await fetcher(u, { headers: { accept: "application/dns-json" }, signal: AbortSignal.timeout(5_000) });
      if (!res.ok) throw new Error(`resolver answered ${res.status}`);
      const body = (await res.json()) as { Status?: number; Answer?: { type: number; data: string }[] };
      if (body.Status !== 0 && body.Status !== 3) throw new Error(`resolver status ${body.Status}`);
      const want = type === "A" ? 1 : 28;
      return (body.Answer ?? []).filter((a) => a.type === want).map((a) => a.data);
    };
    const addrs = (await Promise.all([ask("A"), ask("AAAA")])).flat();
    if (dnsCache.size >= DNS_CACHE_MAX) dnsCache.delete(dnsCache.keys().next().value!);
    dnsCache.set(endpoint + " " + host, { addrs, until: now + DNS_CACHE_MS });
    return addrs;
  };
}

/** The policy from the Worker's settings. */
export function outboundPolicy(env: { WEBHOOK_ALLOW_HOSTS?: string; WEBHOOK_DNS_URL?: string }): OutboundPolicy {
  return {
    allowHosts: parseAllowHosts(env.WEBHOOK_ALLOW_HOSTS),
    resolve: dohResolver(env.WEBHOOK_DNS_URL || "https://cloudflare-dns.com/dns-query"),
  };
}
