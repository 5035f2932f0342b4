// A real webhook receiver for the tests and the benchmark: a Node HTTP server that verifies every
// delivery with the official `standardwebhooks` package, deduplicates by webhook-id, and misbehaves
// on request (fail the first N attempts, fail at random with 5xx / timeouts / dropped connections,
// 410, 429/503 with Retry-After, redirects). It also answers DNS-over-HTTPS JSON queries for a small
// test zone, so the SSRF rules' name resolution runs against a real resolver protocol offline.
//
//   POST /r/<name>             a receiver; behaviour set by PUT /_control/<name>
//   PUT  /_control/<name>      {secrets: [whsec_…], mode, failFirst, status, retryAfter, random, redirectTo, seed}
//   GET  /_control/<name>      {requests: [...], attempts, unique, duplicates, verified, unverified} (?summary=1: no requests)
//   GET  /dns-query?name=&type=A|AAAA
//
// Run alone: node test/receiver/server.mjs --port 8812
import { createServer } from "node:http";
import { parseArgs } from "node:util";
import { Webhook } from "standardwebhooks";

/** The test DNS zone: name -> answers (type 1 A, 28 AAAA, 5 CNAME). Anything else is NXDOMAIN. */
const ZONE = {
  "public.test": [{ type: 1, data: "93.184.215.14" }, { type: 28, data: "2606:2800:21f:cb07:6820:80da:af6b:8b2c" }],
  "private.test": [{ type: 1, data: "10.1.2.3" }],
  "loopback.test": [{ type: 1, data: "127.0.0.1" }],
  "mixed.test": [{ type: 1, data: "93.184.215.14" }, { type: 1, data: "127.0.0.1" }],
  "metadata.test": [{ type: 1, data: "169.254.169.254" }],
  "ula.test": [{ type: 28, data: "fd00::1" }],
  "mapped.test": [{ type: 28, data: "::ffff:10.0.0.1" }],
  "cgnat.test": [{ type: 1, data: "100.100.100.200" }],
  "cname.test": [{ type: 5, data: "private.test." }, { type: 1, data: "10.1.2.3" }],
};

/** Small seeded PRNG (mulberry32), so a soak's failure pattern can be reproduced. */
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function startReceiver(port = 0, host = "127.0.0.1") {
  /** name -> { cfg, requests, seen: Map<id, count>, random } */
  const receivers = new Map();
  const get = (name) => {
    if (!receivers.has(name)) receivers.set(name, { cfg: { mode: "ok", secrets: [] }, requests: [], seen: new Map(), random: rng(1) });
    return receivers.get(name);
  };
  const json = (res, status, body) => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(body));
  };

  const server = createServer(async (req, res) => {
    const url = new URL(req.url, "http://x");
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const body = Buffer.concat(chunks).toString("utf8");

    if (url.pathname === "/dns-query") {
      const name = (url.searchParams.get("name") ?? "").toLowerCase().replace(/\.$/, "");
      const type = url.searchParams.get("type") === "AAAA" ? 28 : 1;
      const rrs = ZONE[name];
      if (!rrs) return json(res, 200, { Status: 3, Answer: [] });
      return json(res, 200, { Status: 0, Answer: rrs.filter((r) => r.type === type || r.type === 5).map((r) => ({ name, ...r })) });
    }

    const control = /^\/_control\/([\w-]+)$/.exec(url.pathname);
    if (control) {
      const r = get(control[1]);
      if (req.method === "PUT") {
        r.cfg = { mode: "ok", secrets: [], ...JSON.parse(body || "{}") };
        r.requests = [];
        r.seen = new Map();
        r.random = rng(r.cfg.seed ?? 1);
        return json(res, 200, { ok: true });
      }
      const unique = r.seen.size;
      return json(res, 200, {
        // ?summary=1: counts only (cheap to poll while a soak runs)
        requests: url.searchParams.has("summary") ? [] : r.requests,
        attempts: r.requests.length,
        unique,
        duplicates: r.requests.filter((q) => q.accepted).length - unique,
        verified: r.requests.filter((q) => q.verified).length,
        unverified: r.requests.filter((q) => !q.verified).length,
      });
    }

    const m = /^\/r\/([\w-]+)(\/.*)?$/.exec(url.pathname);
    if (!m || req.method !== "POST") return json(res, 404, { error: "no such receiver" });
    const r = get(m[1]);
    const cfg = r.cfg;
    const id = req.headers["webhook-id"];
    const n = r.requests.filter((q) => q.id === id).length + 1; // this id's attempt number here
    let verified = false;
    let verifiedWith = null;
    for (const [i, secret] of (cfg.secrets ?? []).entries()) {
      try {
        new Webhook(secret).verify(body, req.headers);
        verified = true;
        verifiedWith = i;
        break;
      } catch {
        // try the next secret
      }
    }
    const rec = {
      id,
      n,
      at: Date.now(),
      timestamp: Number(req.headers["webhook-timestamp"]),
      signatures: String(req.headers["webhook-signature"] ?? "").split(" ").length,
      verified,
      verifiedWith,
      body: JSON.parse(body || "null"),
      outcome: "",
      accepted: false,
    };
    r.requests.push(rec);
    const fail = (status, headers = {}) => {
      rec.outcome = String(status);
      res.writeHead(status, { "content-type": "text/plain", ...headers });
      res.end("no");
    };
    const accept = () => {
      rec.outcome = "200";
      rec.accepted = true;
      r.seen.set(id, (r.seen.get(id) ?? 0) + 1);
      res.writeHead(200, { "content-type": "application/json" });
      res.end('{"ok":true}');
    };
    if (!verified) return fail(401);
    switch (cfg.mode) {
      case "ok":
        return accept();
      case "fail-first":
        return n <= cfg.failFirst ? fail(cfg.status ?? 500, cfg.retryAfter !== undefined ? { "retry-after": String(cfg.retryAfter) } : {}) : accept();
      case "always":
        return fail(cfg.status ?? 500);
      case "gone":
        return fail(410);
      case "redirect":
        rec.outcome = "redirect";
        res.writeHead(cfg.status ?? 307, { location: cfg.redirectTo });
        return res.end();
      case "random": {
        const x = r.random();
        const p = cfg.random ?? { error: 0.1, timeout: 0.05, drop: 0.05 };
        if (x < p.error) return fail(x < p.error / 2 ? 500 : 503);
        if (x < p.error + p.timeout) {
          rec.outcome = "timeout";
          return; // never answer: the sender's timeout fires; the socket closes when it gives up
        }
        if (x < p.error + p.timeout + p.drop) {
          rec.outcome = "dropped";
          return req.socket.destroy();
        }
        return accept();
      }
      default:
        return fail(500);
    }
  });
  return new Promise((resolve) =>
    server.listen(port, host, () => resolve({ server, port: server.address().port, url: `http://${host}:${server.address().port}` })),
  );
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({ options: { port: { type: "string", default: "8812" } } });
  const { url } = await startReceiver(Number(values.port));
  console.log(`receiver on ${url}`);
}
