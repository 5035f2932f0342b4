#!/usr/bin/env node
// Creates an API key for the local worker (wrangler dev --persist-to .state).
//
//   node scripts/create_key.mjs --tenant acme --name laptop [--rate-limit 60] [--save FILE] [--persist-to .state]
//
// Prints the key once. Only its SHA-256 is stored, in the SESSIONS KV namespace of the local
// persisted state, as `key:<hex sha256>` -> {"tenant","name","created"[,"rateLimitPerMinute"]}.
// --save also writes the key to FILE (mode 600), which scripts/setup.sh uses for .state/local-api-key.
// For a deployed worker, drop --local/--persist-to from the wrangler command below (it then writes
// to the real namespace).
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const { values } = parseArgs({
  options: {
    tenant: { type: "string" },
    name: { type: "string", default: "default" },
    "rate-limit": { type: "string" },
    save: { type: "string" },
    "persist-to": { type: "string", default: ".state" },
  },
});
if (!values.tenant) {
  console.error("usage: node scripts/create_key.mjs --tenant TENANT [--name NAME] [--rate-limit N] [--save FILE]");
  process.exit(2);
}

const key = "rpk_" + randomBytes(32).toString("hex");
const hash = createHash("sha256").update(key).digest("hex");
const record = { tenant: values.tenant, name: values.name, created: Math.floor(Date.now() / 1000) };
if (values["rate-limit"] !== undefined) record.rateLimitPerMinute = Number(values["rate-limit"]);

execFileSync(
  join(root, "node_modules/.bin/wrangler"),
  ["kv", "key", "put", `key:${hash}`, JSON.stringify(record), "--binding", "SESSIONS", "--local", "--persist-to", values["persist-to"]],
  { cwd: root, stdio: ["ignore", "ignore", "inherit"] },
);
if (values.save) writeFileSync(values.save, key + "\n", { mode: 0o600 });
console.log(key);
