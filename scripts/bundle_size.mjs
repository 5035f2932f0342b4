#!/usr/bin/env node
// The deployable Worker's size: `wrangler deploy --dry-run --outdir` (bundles src/index.ts with ort's
// wasm and the KV codec's wasm; the model weights stay in R2), then the gzip size wrangler reports
// against Workers' compressed-size limit (10 MB on the paid plan; the free plan allows 3 MB).
//   node scripts/bundle_size.mjs [--limit-mb 10]      (CI: scripts/test_all.sh)
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const { values } = parseArgs({ options: { "limit-mb": { type: "string", default: "10" } } });
const out = mkdtempSync(join(os.tmpdir(), "reprise-bundle-"));
try {
  const log = execFileSync(join(root, "node_modules/.bin/wrangler"), ["deploy", "--dry-run", "--outdir", out], { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  const m = /Total Upload:\s*([\d.]+) KiB \/ gzip:\s*([\d.]+) KiB/.exec(log);
  if (!m) throw new Error(`no size line in wrangler's output:\n${log}`);
  const [total, gzip] = [Number(m[1]) * 1024, Number(m[2]) * 1024];
  const limit = Number(values["limit-mb"]) * 1e6;
  console.log(`bundle: ${(total / 1e6).toFixed(2)} MB, gzip ${(gzip / 1e6).toFixed(2)} MB (limit ${limit / 1e6} MB compressed)`);
  if (gzip > limit) {
    console.error("bundle: over Workers' compressed-size limit");
    process.exit(1);
  }
} finally {
  rmSync(out, { recursive: true, force: true });
}
