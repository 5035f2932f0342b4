// bench/results/summary/<topic>.json is written by benchmark scripts only: each merges the keys it
// measured into the file and leaves the others (another script's figures) as they are.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

/** Merges `fields` into bench/results/summary/<topic>.json; returns the merged object. */
export function mergeSummary(topic, fields) {
  const path = join(root, "bench/results/summary", `${topic}.json`);
  mkdirSync(dirname(path), { recursive: true });
  const old = existsSync(path) ? JSON.parse(readFileSync(path, "utf8")) : {};
  const merged = { ...old, ...fields };
  writeFileSync(path, JSON.stringify(merged, null, 2) + "\n");
  return merged;
}
