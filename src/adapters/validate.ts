/**
 * Checks a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) before anything is
 * stored: the same rules as the GPU backend's gpu-backend/reprise_gpu/lora/registry.py, so an
 * adapter the edge accepts is one the backend serves (docs/lora-adapters.md).
 *
 * safetensors = u64 LE header length N | N bytes of JSON {name: {dtype, shape, data_offsets: [b, e]}}
 * | data. The header is parsed here rather than by a library: the format is that one JSON object, and
 * every check a hostile file needs (offsets inside the buffer, contiguous, sizes matching shapes) is
 * ours to make anyway. Every float is scanned for NaN and infinity.
 */

/** Model shapes by the GPU backend's preset name. */
export interface ModelShape {
  layers: number;
  dim: number;
  qSize: number;
  kvSize: number;
  ffn: number;
  /** Base-model names an adapter may declare (last path component, lower case). */
  names: string[];
}

export const MODEL_SHAPES: Record<string, ModelShape> = {
  "smollm2-135m": { layers: 30, dim: 576, qSize: 576, kvSize: 192, ffn: 1536, names: ["smollm2-135m-instruct", "smollm2-135m"] },
  "llama3-8b": { layers: 32, dim: 4096, qSize: 4096, kvSize: 1024, ffn: 14336, names: ["meta-llama-3-8b", "llama-3-8b", "meta-llama-3-8b-instruct", "llama3-8b"] },
};

export const LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] as const;
export const MIN_RANK = 4;
export const MAX_RANK = 128;
export const MAX_CONFIG_BYTES = 64 << 10;
const HEADER_SLACK = 1 << 20;
const UNSUPPORTED: Record<string, unknown> = { use_dora: true, lora_bias: true, fan_in_fan_out: true, use_qalora: true };
const MUST_BE_EMPTY = ["rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform", "layer_replication",
  "trainable_token_indices", "target_parameters", "alora_invocation_tokens"];
const DTYPE_BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2 };

export class AdapterError extends Error {}

export interface AdapterInfo {
  rank: number;
  alpha: number;
  targetModules: string[];
  baseModel: string | null;
  tensors: number;
}

function moduleShape(s: ModelShape, m: string): [number, number] {
  const t: Record<string, [number, number]> = {
    q_proj: [s.dim, s.qSize], k_proj: [s.dim, s.kvSize], v_proj: [s.dim, s.kvSize], o_proj: [s.qSize, s.dim],
    gate_proj: [s.dim, s.ffn], up_proj: [s.dim, s.ffn], down_proj: [s.ffn, s.dim],
  };
  return t[m]!;
}

/** The largest valid adapter_model.safetensors for a shape: rank 128 on all seven projections, float32. */
export function maxWeightsBytes(s: ModelShape): number {
  const perRank = LORA_MODULES.reduce((n, m) => n + moduleShape(s, m)[0] + moduleShape(s, m)[1], 0);
  return s.layers * MAX_RANK * perRank * 4 + HEADER_SLACK;
}

export function tensorName(layer: number, module: string, which: "A" | "B"): string {
  const block = module === "gate_proj" || module === "up_proj" || module === "down_proj" ? "mlp" : "self_attn";
  return `base_model.model.model.layers.${layer}.${block}.${module}.lora_${which}.weight`;
}

/** adapter_config.json -> rank, alpha, targets (in LORA_MODULES order); throws AdapterError. */
export function checkConfig(bytes: Uint8Array, shape: ModelShape): Omit<AdapterInfo, "tensors"> {
  if (bytes.byteLength > MAX_CONFIG_BYTES) throw new AdapterError(`adapter_config.json is ${bytes.byteLength} bytes; the limit is ${MAX_CONFIG_BYTES}`);
  let c: unknown;
  try {
    c = JSON.parse(new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes));
  } catch (e) {
    throw new AdapterError(`adapter_config.json is not JSON: ${(e as Error).message}`);
  }
  if (typeof c !== "object" || c === null || Array.isArray(c)) throw new AdapterError("adapter_config.json must be a JSON object");
  const cfg = c as Record<string, unknown>;
  if (cfg.peft_type !== "LORA") throw new AdapterError(`peft_type must be "LORA", got ${JSON.stringify(cfg.peft_type)}`);
  const r = cfg.r;
  if (typeof r !== "number" || !Number.isInteger(r) || r < MIN_RANK || r > MAX_RANK)
    throw new AdapterError(`r must be an integer from ${MIN_RANK} to ${MAX_RANK}, got ${JSON.stringify(r)}`);
  const alpha = cfg.lora_alpha ?? 8;
  if (typeof alpha !== "number" || !Number.isFinite(alpha) || alpha <= 0)
    throw new AdapterError(`lora_alpha must be a positive number, got ${JSON.stringify(alpha)}`);
  const t = cfg.target_modules;
  if (!Array.isArray(t) || t.length === 0 || t.some((x) => typeof x !== "string"))
    throw new AdapterError("target_modules must be a non-empty list of module names (a regex string is not accepted)");
  const unknown = t.filter((x) => !(LORA_MODULES as readonly string[]).includes(x as string));
  if (unknown.length) throw new AdapterError(`target_modules ${JSON.stringify(unknown)} are not supported; allowed: ${LORA_MODULES.join(", ")}`);
  if ((cfg.bias ?? "none") !== "none") throw new AdapterError(`bias must be "none", got ${JSON.stringify(cfg.bias)}`);
  for (const [k, bad] of Object.entries(UNSUPPORTED)) if (cfg[k] === bad) throw new AdapterError(`${k}=${String(bad)} is not supported`);
  for (const k of MUST_BE_EMPTY) {
    const v = cfg[k];
    if (v && !(typeof v === "object" && Object.keys(v).length === 0)) throw new AdapterError(`${k} is not supported (got ${JSON.stringify(v)})`);
  }
  if (cfg.use_rslora !== undefined && typeof cfg.use_rslora !== "boolean") throw new AdapterError("use_rslora must be a boolean");
  const base = cfg.base_model_name_or_path ?? null;
  if (base !== null) {
    if (typeof base !== "string") throw new AdapterError("base_model_name_or_path must be a string");
    const name = base.replace(/\/+$/, "").split("/").pop()!.toLowerCase();
    if (name && !shape.names.includes(name)) throw new AdapterError(`the adapter was trained for '${base}'; this model is ${shape.names[0]}`);
  }
  return { rank: r, alpha, targetModules: LORA_MODULES.filter((m) => t.includes(m)), baseModel: base };
}

interface Entry {
  dtype: string;
  shape: number[];
  begin: number;
  end: number;
}

/** The header of a safetensors file, every entry checked against the buffer; throws AdapterError. */
export function parseSafetensors(buf: Uint8Array): { entries: Map<string, Entry>; dataStart: number } {
  const bad = (why: string) => new AdapterError(`adapter_model.safetensors is not a valid safetensors file: ${why}`);
  if (buf.byteLength < 8) throw bad("shorter than its 8-byte header length");
  const n = Number(new DataView(buf.buffer, buf.byteOffset, 8).getBigUint64(0, true));
  if (n < 2 || n > 100 << 20 || 8 + n > buf.byteLength) throw bad(`header length ${n} does not fit the file`);
  let h: unknown;
  try {
    h = JSON.parse(new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(buf.subarray(8, 8 + n)));
  } catch {
    throw bad("header is not JSON");
  }
  if (typeof h !== "object" || h === null || Array.isArray(h)) throw bad("header is not an object");
  const dataStart = 8 + n;
  const dataLen = buf.byteLength - dataStart;
  const entries = new Map<string, Entry>();
  for (const [name, v] of Object.entries(h as Record<string, unknown>)) {
    if (name === "__metadata__") continue;
    const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const off = e?.data_offsets;
    if (typeof e?.dtype !== "string" || !Array.isArray(e.shape) || !Array.isArray(off) || off.length !== 2) throw bad(`entry ${name} is malformed`);
    if (!e.shape.every((d) => Number.isInteger(d) && d >= 0) || !off.every((d) => Number.isInteger(d) && d >= 0)) throw bad(`entry ${name} is malformed`);
    const [begin, end] = off as [number, number];
    if (begin > end || end > dataLen) throw bad(`entry ${name} lies outside the data`);
    const size = DTYPE_BYTES[e.dtype];
    if (size !== undefined && (e.shape as number[]).reduce((a, d) => a * d, 1) * size !== end - begin) throw bad(`entry ${name} has a size that does not match its shape`);
    entries.set(name, { dtype: e.dtype, shape: e.shape as number[], begin, end });
  }
  const spans = [...entries.values()].sort((a, b) => a.begin - b.begin);
  let at = 0;
  for (const s of spans) {
    if (s.begin !== at) throw bad("tensors overlap or leave gaps");
    at = s.end;
  }
  if (at !== dataLen) throw bad("bytes after the last tensor");
  return { entries, dataStart };
}

function hasNonFinite(buf: Uint8Array, start: number, end: number, dtype: string): boolean {
  const dv = new DataView(buf.buffer, buf.byteOffset + start, end - start);
  if (dtype === "F32") {
    for (let i = 0; i < end - start; i += 4) if ((dv.getUint32(i, true) & 0x7f800000) === 0x7f800000) return true;
  } else {
    const mask = dtype === "F16" ? 0x7c00 : 0x7f80; // exponent bits all ones: infinity or NaN
    for (let i = 0; i < end - start; i += 2) if ((dv.getUint16(i, true) & mask) === mask) return true;
  }
  return false;
}

/** Both files checked against a model shape -> what the adapter is; throws AdapterError. */
export function checkAdapter(config: Uint8Array, weights: Uint8Array, shape: ModelShape): AdapterInfo {
  const c = checkConfig(config, shape);
  const limit = maxWeightsBytes(shape);
  if (weights.byteLength > limit) throw new AdapterError(`adapter_model.safetensors is ${weights.byteLength} bytes; the limit for this model is ${limit}`);
  const { entries, dataStart } = parseSafetensors(weights);
  const expected = new Map<string, number[]>();
  for (let i = 0; i < shape.layers; i++)
    for (const m of c.targetModules) {
      const [nin, nout] = moduleShape(shape, m);
      expected.set(tensorName(i, m, "A"), [c.rank, nin]);
      expected.set(tensorName(i, m, "B"), [nout, c.rank]);
    }
  const missing = [...expected.keys()].filter((k) => !entries.has(k));
  if (missing.length) throw new AdapterError(`${missing.length} tensor(s) missing, e.g. ${missing[0]}`);
  const extra = [...entries.keys()].filter((k) => !expected.has(k));
  if (extra.length) throw new AdapterError(`${extra.length} unexpected tensor(s), e.g. ${extra[0]} (the config names ${c.targetModules.join(", ")})`);
  for (const [name, want] of expected) {
    const e = entries.get(name)!;
    if (!(e.dtype in DTYPE_BYTES)) throw new AdapterError(`${name} is ${e.dtype}; only F32, F16 and BF16 are accepted`);
    if (e.shape.length !== 2 || e.shape[0] !== want[0] || e.shape[1] !== want[1])
      throw new AdapterError(`${name} has shape ${JSON.stringify(e.shape)}; expected ${JSON.stringify(want)} for this model and r=${c.rank}`);
    if (hasNonFinite(weights, dataStart + e.begin, dataStart + e.end, e.dtype)) throw new AdapterError(`${name} has a non-finite value (NaN or infinity)`);
  }
  return { ...c, tensors: entries.size };
}
