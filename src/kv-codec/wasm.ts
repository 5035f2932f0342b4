/**
 * The KV codec's wasm module (wasm/src, built by wasm/build.mjs into wasm/build/kv_codec.wasm) and
 * its memory: one instance per isolate, a bump arena that the host resets before each chunk and
 * allocates its buffers from. The module imports nothing and arrives precompiled (wrangler's
 * CompiledWasm rule), so instantiating it is synchronous.
 */
import kvCodecModule from "../../wasm/build/kv_codec.wasm";

/** Statuses shared with the Python reference (gpu-backend/reprise_gpu/codec/format.py `Status`). */
export const CODEC_STATUS = [
  "OK", "TRUNCATED", "BAD_MAGIC", "BAD_VERSION", "FINGERPRINT_MISMATCH", "SHAPE_MISMATCH",
  "PAYLOAD_CHECKSUM", "CORRUPT", "VALUE_CHECKSUM", "OUT_OF_MEMORY", "BAD_CALL",
] as const;
export type CodecStatus = (typeof CODEC_STATUS)[number];

export function statusName(code: number): CodecStatus {
  return CODEC_STATUS[code] ?? "BAD_CALL";
}

interface Exports {
  memory: WebAssembly.Memory;
  arena_reset(): void;
  arena_alloc(bytes: number): number;
  arena_used(): number;
  sha256_digest(data: number, n: number, out: number): number;
  spec_v1_open(data: number, len: number, fp: number, fpLen: number, L: number, KH: number, D: number, t0: number, t1: number): number;
  spec_v1_layer(pred: number, out: number, observed: number): number;
  spec_v1_finish(): number;
  spec_v1_exps(): number;
  spec_v2_open(data: number, len: number, fp: number, fpLen: number, L: number, KH: number, D: number, t0: number, t1: number): number;
  spec_v2_layer(pred: number, out: number, observed: number): number;
  spec_v2_finish(): number;
  spec_v2_exps(): number;
  edge_kv_begin(L: number, KH: number, T: number, D: number): number;
  edge_kv_encode_block(values: number, out: number, cap: number): number;
  edge_kv_header(out: number): number;
  edge_kv_check_header(data: number, len: number): number;
  edge_kv_decode_block(data: number, len: number, out: number): number;
  edge_kv_end(): number;
  [name: string]: unknown;
}

export class CodecWasm {
  constructor(readonly fn: Exports) {}

  /** Forgets every buffer handed out before (their bytes may be reused). */
  reset(): void {
    this.fn.arena_reset();
  }

  /** A fresh arena buffer of `bytes` bytes (16-byte aligned); throws when memory cannot grow. */
  alloc(bytes: number): number {
    const p = this.fn.arena_alloc(bytes);
    if (p === 0 && bytes > 0) throw new Error(`kv codec wasm: cannot allocate ${bytes} bytes`);
    return p;
  }

  /** Copies `data` into a new arena buffer. */
  put(data: Uint8Array): number {
    const p = this.alloc(data.byteLength);
    this.u8(p, data.byteLength).set(data);
    return p;
  }

  /** Views into wasm memory; take them again after any call that may grow memory. */
  u8(ptr: number, n: number): Uint8Array {
    return new Uint8Array(this.fn.memory.buffer, ptr, n);
  }

  u16(ptr: number, n: number): Uint16Array {
    return new Uint16Array(this.fn.memory.buffer, ptr, n);
  }

  f32(ptr: number, n: number): Float32Array {
    return new Float32Array(this.fn.memory.buffer, ptr, n);
  }

  /** Bytes of wasm memory (its high-water mark: wasm memory never shrinks). */
  memoryBytes(): number {
    return this.fn.memory.buffer.byteLength;
  }
}

let instance: CodecWasm | null = null;

/**
 * The codec module of this isolate.
 *
 * @example
 * ```ts
 * const w = codecWasm();
 * w.reset();
 * const p = w.put(bytes);
 * ```
 */
export function codecWasm(): CodecWasm {
  instance ??= new CodecWasm(new WebAssembly.Instance(kvCodecModule, {}).exports as unknown as Exports);
  return instance;
}
