/**
 * The edge model's files in R2 (scripts/edge_model/files.py writes them): a manifest at
 * EDGE_MODEL_KEY (`models/<model>-<variant>.json`) naming one ONNX graph + external-data weights per
 * onnxruntime session, each with its size and SHA-256, beside it under `models/<dir>/`.
 */
import { z } from "zod";

const FileEntry = z.object({ name: z.string().regex(/^[a-z0-9.-]+$/), bytes: z.number().int().nonnegative(), sha256: z.string().regex(/^[0-9a-f]{64}$/) });
const Session = z.object({ name: z.string(), graph: z.string(), first: z.number().int().optional(), last: z.number().int().optional() });

export const Manifest = z.object({
  format: z.literal("reprise-edge-model"),
  version: z.literal(1),
  variant: z.string(),
  kv: z.literal("bf16-in-f16"),
  layers: z.literal(30),
  kv_heads: z.literal(3),
  head_dim: z.literal(64),
  hidden: z.literal(576),
  vocab: z.literal(49152),
  dir: z.string().regex(/^[a-z0-9.-]+$/),
  sessions: z.array(Session).min(2),
  files: z.array(FileEntry),
  staging_bytes: z.number().int().positive(),
});
export type Manifest = z.infer<typeof Manifest>;

/** R2 key of a file the manifest at `manifestKey` names. */
export function modelFileKey(manifestKey: string, manifest: Manifest, name: string): string {
  return `${manifestKey.slice(0, manifestKey.lastIndexOf("/") + 1)}${manifest.dir}/${name}`;
}

/** The manifest entry of `name`, or an error naming what is missing. */
export function fileEntry(manifest: Manifest, name: string): z.infer<typeof FileEntry> {
  const f = manifest.files.find((x) => x.name === name);
  if (!f) throw new Error(`edge model manifest lists no file ${name}`);
  return f;
}

/** Decoder sessions in run order, checked to cover layers 0..layers-1 exactly once. */
export function layerSessions(manifest: Manifest): { name: string; graph: string; first: number; last: number }[] {
  const groups = manifest.sessions.filter((s) => s.name !== "head").map((s) => ({ ...s, first: s.first ?? -1, last: s.last ?? -1 }));
  let next = 0;
  for (const g of groups) {
    if (g.first !== next || g.last <= g.first) throw new Error(`edge model manifest: session ${g.name} covers [${g.first}, ${g.last}), expected to start at ${next}`);
    next = g.last;
  }
  if (next !== manifest.layers) throw new Error(`edge model manifest: sessions cover ${next} of ${manifest.layers} layers`);
  return groups;
}
