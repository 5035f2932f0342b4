/**
 * The "gpu" Backend: one signed `POST {GPU_BACKEND_URL}/v1/generate` per generation step, in the
 * framed binary format of docs/backend-wire-format.md (version 1).
 *
 *   frame = kind (u8: 0x01 JSON, 0x02 KV chunk) | length (u32 LE) | payload
 *   request  = JSON header {version, model, prompt_token_ids, sampling, chunks, adapter?, storage?} + `chunks` KV frames
 *              (+ two adapter frames 0x03 when the adapter travels inline)
 *   response = JSON token events ..., one KV frame, JSON done (or JSON error)
 *   X-Reprise-Timestamp: unix seconds; X-Reprise-Signature: v1=hex(HMAC-SHA256(secret, ts + "." + body))
 */
import { concatBytes, hmacSha256, toHex, utf8 } from "../crypto";
import type { Bindings } from "../env";
import type { TurnStats } from "../sessions/rates";
import { inlineAdapter } from "./types";
import type { AdapterFiles, AdapterGrants, Backend, GenerateEvent, GenerateRequest, StoragePlan, StoredChunkReport } from "./types";

export const WIRE_VERSION = 1;
export const FRAMES_CONTENT_TYPE = "application/x-reprise-frames";
export const KIND_JSON = 0x01;
export const KIND_KV = 0x02;
/** A LoRA adapter file (request only): adapter_config.json, then adapter_model.safetensors. */
export const KIND_ADAPTER = 0x03;
/** kind (1) + length (4). */
const FRAME_HEAD = 5;
/** Response frames we accept: a token event is tiny; a KV chunk of a full 8k context in BF16 is ~190 MB. */
const MAX_JSON_FRAME = 1 << 20;
const MAX_KV_FRAME = 256 << 20;
/** Time to the response headers; generation itself may take as long as it takes. */
const HEADERS_TIMEOUT_MS = 30_000;
/** Producer fingerprints of the GPU backend start with this (docs/backend-wire-format.md). */
const GPU_PRODUCER_PREFIX = "reprise-gpu/";

/** Public model id -> the backend's preset name, from `GPU_BACKEND_MODELS` ("id=preset,id2=preset2"). */
export function gpuModelMap(spec: string | undefined): Map<string, string> {
  const m = new Map<string, string>();
  for (const part of (spec ?? "smollm2-135m-instruct=smollm2-135m").split(",")) {
    const [id, preset] = part.split("=").map((s) => s.trim());
    if (id) m.set(id, preset || id);
  }
  return m;
}

/** One frame: kind, u32 LE length, payload. */
export function frame(kind: number, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(FRAME_HEAD + payload.byteLength);
  out[0] = kind;
  new DataView(out.buffer).setUint32(1, payload.byteLength, true);
  out.set(payload, FRAME_HEAD);
  return out;
}

/** The request body for one step. */
export function encodeGenerateBody(preset: string, req: GenerateRequest): Uint8Array {
  const s = req.sampling;
  const header = {
    version: WIRE_VERSION,
    model: preset,
    prompt_token_ids: req.promptIds,
    sampling: {
      max_tokens: s.maxTokens,
      temperature: s.temperature,
      top_p: s.topP,
      // The backend takes seeds in [0, 2^63); OpenAI's may be negative. Map them one-to-one.
      ...(s.seed === undefined ? {} : { seed: s.seed < 0 ? s.seed + Number.MAX_SAFE_INTEGER + 1 : s.seed }),
      stop: s.stop,
    },
    chunks: req.restored.length,
    // The adapter: read grants for its two files (the backend fetches and checks them), or, without
    // grants, the files inline after the KV frames. Either way the backend caches it by key.
    ...(req.adapter ? { adapter: adapterHeader(req.adapter) } : {}),
    ...(req.storage ? { storage: storageHeader(req.storage) } : {}),
  };
  const adapter = req.adapter && inlineAdapter(req.adapter) ? [frame(KIND_ADAPTER, req.adapter.config), frame(KIND_ADAPTER, req.adapter.weights)] : [];
  return concatBytes(frame(KIND_JSON, utf8(JSON.stringify(header))), ...req.restored.map((c) => frame(KIND_KV, c.bytes)), ...adapter);
}

/** The request header's `adapter` object (docs/backend-wire-format.md). */
function adapterHeader(a: AdapterFiles | AdapterGrants) {
  if (inlineAdapter(a)) return { key: a.key, inline: true };
  return { key: a.key, config: a.config, weights: a.weights };
}

/** The request header's `storage` object (snake_case, docs/backend-wire-format.md). */
function storageHeader(p: StoragePlan) {
  return {
    chunks: p.chunks.map((c) => ({
      grant: c.grant, token_start: c.tokenStart, token_end: c.tokenEnd, bytes: c.bytes, sha256: c.sha256, codec: c.codec, mac: c.mac,
    })),
    restore_from: p.restoreFrom,
    export_from: p.exportFrom,
    put: p.put.map((x) => ({ grant: x.grant, form: x.form })),
  };
}

/** A `kv_stored` event's chunk, or null when a field is missing or of the wrong type. */
export function storedReport(ev: Record<string, unknown>): StoredChunkReport | null {
  const str = (k: string) => (typeof ev[k] === "string" ? (ev[k] as string) : null);
  const int = (k: string) => (Number.isSafeInteger(ev[k]) && (ev[k] as number) >= 0 ? (ev[k] as number) : null);
  const r = {
    key: str("key"), codec: str("codec"), sha256: str("sha256"), mac: str("mac"), producer: str("producer"),
    bytes: int("bytes"), tokenStart: int("token_start"), tokenEnd: int("token_end"),
  };
  return Object.values(r).every((v) => v !== null) ? (r as StoredChunkReport) : null;
}

/** `v1=` + hex HMAC-SHA256 of `${timestamp}.${body}` under `secret`. */
export async function signRequest(secret: string, timestamp: string, body: Uint8Array): Promise<string> {
  return "v1=" + toHex(await hmacSha256(secret, concatBytes(`${timestamp}.`, body)));
}

/**
 * Splits a byte stream into frames as they arrive, copying each byte once. Throws on an unknown
 * kind, an oversized frame, or a stream that ends inside a frame.
 */
export async function* readFrames(body: ReadableStream<Uint8Array>): AsyncGenerator<{ kind: number; payload: Uint8Array }> {
  const reader = body.getReader();
  const parts: Uint8Array[] = [];
  let have = 0;
  /** Reads until `n` bytes are buffered; false if the stream ended first. */
  const fill = async (n: number) => {
    while (have < n) {
      const { done, value } = await reader.read();
      if (done) return false;
      parts.push(value);
      have += value.byteLength;
    }
    return true;
  };
  const take = (n: number) => {
    const out = new Uint8Array(n);
    for (let off = 0; off < n; ) {
      const p = parts[0]!;
      const k = Math.min(p.byteLength, n - off);
      out.set(p.subarray(0, k), off);
      off += k;
      if (k === p.byteLength) parts.shift();
      else parts[0] = p.subarray(k);
    }
    have -= n;
    return out;
  };
  try {
    for (;;) {
      if (!(await fill(FRAME_HEAD))) {
        if (have) throw new Error("gpu backend: stream ended inside a frame header");
        return;
      }
      const head = take(FRAME_HEAD);
      const kind = head[0]!;
      const len = new DataView(head.buffer).getUint32(1, true);
      if (kind !== KIND_JSON && kind !== KIND_KV) throw new Error(`gpu backend: unknown frame kind ${kind}`);
      if (len > (kind === KIND_JSON ? MAX_JSON_FRAME : MAX_KV_FRAME)) throw new Error(`gpu backend: frame of ${len} bytes`);
      if (!(await fill(len))) throw new Error("gpu backend: stream ended inside a frame");
      yield { kind, payload: take(len) };
    }
  } finally {
    reader.releaseLock();
  }
}

/** Response frames -> GenerateEvents; throws on an error event or a stream cut before `done`. */
export async function* parseGenerateStream(body: ReadableStream<Uint8Array>): AsyncGenerator<GenerateEvent> {
  const dec = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
  for await (const f of readFrames(body)) {
    if (f.kind === KIND_KV) {
      yield { type: "kv", chunk: f.payload };
      continue;
    }
    const ev = JSON.parse(dec.decode(f.payload)) as Record<string, unknown>;
    if (ev.type === "token") {
      if (!Number.isInteger(ev.id) || typeof ev.text !== "string") throw new Error("gpu backend: malformed token event");
      yield { type: "token", id: ev.id as number, text: ev.text };
    } else if (ev.type === "done") {
      const usage = (ev.usage ?? {}) as { cached_tokens?: unknown };
      const finishReason = ev.finish_reason === "length" ? "length" : "stop";
      yield { type: "done", finishReason, cachedTokens: Number.isInteger(usage.cached_tokens) ? (usage.cached_tokens as number) : 0 };
      return;
    } else if (ev.type === "kv_stored") {
      const chunk = storedReport(ev);
      if (chunk) yield { type: "kv_stored", chunk };
      else console.warn("gpu backend: malformed kv_stored event ignored");
    } else if (ev.type === "stats") {
      if (typeof ev.stats === "object" && ev.stats !== null) yield { type: "stats", stats: ev.stats as TurnStats };
    } else if (ev.type === "error") {
      throw new Error(`gpu backend error: ${JSON.stringify(ev.error)}`);
    }
    // Other event types are ignored: readers skip what they do not know (wire format, Versioning).
  }
  throw new Error("gpu backend: stream ended without a done event");
}

export class GpuHttpBackend implements Backend {
  readonly name = "gpu";
  /** It reads and writes session chunks itself when the request carries grants (docs/storage-grants.md). */
  readonly fetchesStorage = true;
  private readonly presets: Map<string, string>;

  constructor(private readonly env: Bindings) {
    this.presets = gpuModelMap(env.GPU_BACKEND_MODELS);
  }

  models(): string[] {
    return [...this.presets.keys()];
  }

  /** The GPU backend ignores other producers' chunks; sending them would only cost bandwidth. */
  acceptsProducer(producer: string): boolean {
    return producer.startsWith(GPU_PRODUCER_PREFIX);
  }

  async *generate(req: GenerateRequest, signal?: AbortSignal): AsyncGenerator<GenerateEvent> {
    const preset = this.presets.get(req.model);
    if (!preset) throw new Error(`the gpu backend does not serve ${req.model}`);
    const secret = (this.env.GPU_BACKEND_SECRET ?? "").trim();
    if (!secret) throw new Error("GPU_BACKEND_SECRET is not set");
    const body = encodeGenerateBody(preset, req);
    const ts = String(Math.floor(Date.now() / 1000));
    const ctl = new AbortController();
    const onAbort = () => ctl.abort(signal?.reason);
    signal?.addEventListener("abort", onAbort);
    const timer = setTimeout(() => ctl.abort(new Error("gpu backend: no response headers in time")), HEADERS_TIMEOUT_MS);
    try {
      const res = await fetch(new URL("/v1/generate", this.env.GPU_BACKEND_URL), {
        method: "POST",
        headers: {
          "content-type": FRAMES_CONTENT_TYPE,
          "x-reprise-timestamp": ts,
          "x-reprise-signature": await signRequest(secret, ts, body),
        },
        body,
        signal: ctl.signal,
      });
      clearTimeout(timer);
      if (res.status !== 200 || !res.body) {
        const text = await res.text().catch(() => "");
        throw new Error(`gpu backend answered ${res.status}: ${text.slice(0, 500)}`);
      }
      yield* parseGenerateStream(res.body);
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      ctl.abort(); // closing the connection aborts the request on the backend
    }
  }
}
