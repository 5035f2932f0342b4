#!/usr/bin/env node
// Puts the edge model and its tokenizer into the local R2 bucket that `wrangler dev --persist-to .state`
// serves (binding BLOBS), at the keys the Worker reads, for every converted variant (EDGE_MODEL_KEY in
// wrangler.toml names the one it runs):
//
//   models/<model>-<variant>.json                   <- .models/edge/<model>-<variant>.json   (manifest)
//   models/<dir>/<file> for every file it lists     <- .models/edge/<dir>/<file>            (graphs, weights)
//   models/<model>-<variant>.tokenizer.bin          <- .models/edge/tokenizer.bin              (compact BPE)
//
//   node scripts/seed_local_storage.mjs [--persist-to .state] [--force]
//
// Idempotent: .state/edge-model.seeded.json records what was put (key, size, sha256); a file that
// has not changed is not uploaded again. Run scripts/convert_edge_model.py first.
// The vitest runs do not use .state; they seed their own isolated R2 (test/setup/edge-model.ts).
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const { values } = parseArgs({
  options: { "persist-to": { type: "string", default: ".state" }, force: { type: "boolean", default: false } },
});

const toml = readFileSync(join(root, "wrangler.toml"), "utf8");
const modelKey = /^EDGE_MODEL_KEY\s*=\s*"([^"]+)"/m.exec(toml)?.[1];
const bucket = /binding\s*=\s*"BLOBS"\s*\n\s*bucket_name\s*=\s*"([^"]+)"/m.exec(toml)?.[1];
if (!modelKey || !bucket) throw new Error("wrangler.toml: EDGE_MODEL_KEY or the BLOBS bucket_name not found");

const edge = join(root, ".models/edge");
const prefix = modelKey.slice(0, modelKey.lastIndexOf("/") + 1);
const manifests = existsSync(edge) ? readdirSync(edge).filter((f) => /^[a-z0-9.-]+-[a-z0-9]+\.json$/.test(f) && f !== "quality.json" && f !== "verified.json") : [];
if (!manifests.includes(basename(modelKey))) {
  console.error(`.models/edge/${basename(modelKey)} is missing: run gpu-backend/.venv/bin/python scripts/convert_edge_model.py --out .models`);
  process.exit(1);
}
const files = [];
const seen = new Set();
for (const name of manifests) {
  const m = JSON.parse(readFileSync(join(edge, name), "utf8"));
  files.push({ key: prefix + name, path: join(edge, name) });
  files.push({ key: prefix + name.replace(/\.json$/, ".tokenizer.bin"), path: join(edge, "tokenizer.bin") });
  for (const f of m.files) {
    const key = `${prefix}${m.dir}/${f.name}`;
    if (!seen.has(key)) files.push({ key, path: join(edge, m.dir, f.name) }), seen.add(key);
  }
}

const sha256 = (path) =>
  new Promise((resolve, reject) => {
    const h = createHash("sha256");
    createReadStream(path).on("data", (d) => h.update(d)).on("end", () => resolve(h.digest("hex"))).on("error", reject);
  });

const persist = join(root, values["persist-to"]);
const stampPath = join(persist, "edge-model.seeded.json");
const stamp = existsSync(stampPath) ? JSON.parse(readFileSync(stampPath, "utf8")) : {};
mkdirSync(persist, { recursive: true });

for (const f of files) {
  if (!existsSync(f.path)) {
    console.error(`${f.path} is missing: run gpu-backend/.venv/bin/python scripts/convert_edge_model.py --out .models`);
    process.exit(1);
  }
  const record = { size: statSync(f.path).size, sha256: await sha256(f.path) };
  const old = stamp[f.key];
  if (!values.force && old && old.size === record.size && old.sha256 === record.sha256) {
    console.log(`r2 ${bucket}/${f.key}: up to date (${(record.size / 2 ** 20).toFixed(1)} MiB)`);
    continue;
  }
  execFileSync(
    join(root, "node_modules/.bin/wrangler"),
    ["r2", "object", "put", `${bucket}/${f.key}`, "--file", f.path, "--local", "--persist-to", values["persist-to"]],
    { cwd: root, stdio: ["ignore", "ignore", "inherit"] },
  );
  stamp[f.key] = record;
  writeFileSync(stampPath, JSON.stringify(stamp, null, 2) + "\n");
  console.log(`r2 ${bucket}/${f.key}: put ${(record.size / 2 ** 20).toFixed(1)} MiB, sha256 ${record.sha256}`);
}
