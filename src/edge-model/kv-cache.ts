/**
 * The edge model's KV cache in the isolate: per layer, K and V as float16 bit patterns (bfloat16
 * precision, see scripts/edge_model/graph.py kv_round), token-major [tokens][KV_HEADS][HEAD_DIM].
 * Token-major rows let a step append its new rows in place and hand ort a view of exactly the past
 * (ort copies the view into its own buffers for the run, one session's layers at a time).
 *
 * The cache is one block in ort's wasm heap when ort's allocator is reachable (ort-runtime.ts
 * ortHeap): it then reuses what ort freed after loading (the weight staging buffer) instead of adding
 * JS memory beside ort's, whose wasm memory never shrinks. Views are taken from the memory's current
 * buffer at each use (growth would detach a non-shared buffer). Dispose it at the end of the turn
 * (`using`): the block goes back to ort's heap.
 */
import { ort, ortHeap } from "./ort-runtime";

export const LAYERS = 30;
export const KV_HEADS = 3;
export const HEAD_DIM = 64;
/** 16-bit values per token per layer and K or V. */
export const ROW = KV_HEADS * HEAD_DIM;
/** Bytes of KV per token (all layers, K and V). */
export const KV_BYTES_PER_TOKEN = 2 * LAYERS * ROW * 2;

(Symbol as { dispose?: symbol }).dispose ??= Symbol("Symbol.dispose");

export class PastKv {
  /** Tokens whose KV is held: positions 0 .. length-1. */
  length = 0;
  private at = 0; // block in ort's heap, or 0
  private js: Uint16Array | null = null; // or one JS array

  /** `capacity`: tokens to make room for now (a turn: its prompt plus the tokens it expects to generate). */
  constructor(public capacity: number) {
    this.alloc(capacity);
  }

  private alloc(capacity: number): void {
    const heap = ortHeap();
    this.at = heap?.malloc(capacity * KV_BYTES_PER_TOKEN) ?? 0;
    this.js = this.at ? null : new Uint16Array((capacity * KV_BYTES_PER_TOKEN) / 2);
    this.capacity = capacity;
  }

  private block(layer: number, kind: 0 | 1): Uint16Array {
    const n = this.capacity * ROW, offset = (layer * 2 + kind) * n;
    return this.js ? this.js.subarray(offset, offset + n) : new Uint16Array(ortHeap()!.memory.buffer, this.at + 2 * offset, n);
  }

  /** Room for `tokens` more: grows by half again at least (a copy; sized right, a turn never grows). */
  reserve(tokens: number): void {
    const need = this.length + tokens;
    if (need <= this.capacity) return;
    const old = Array.from({ length: 2 * LAYERS }, (_, i) => this.block(i >> 1, (i & 1) as 0 | 1).slice(0, this.length * ROW));
    this.dispose();
    this.alloc(Math.max(need, Math.ceil(this.capacity * 1.5)));
    old.forEach((rows, i) => this.block(i >> 1, (i & 1) as 0 | 1).set(rows));
  }

  /** ort inputs `past_key.{layer}` / `past_value.{layer}`: views of positions [0, length). */
  tensor(layer: number, kind: 0 | 1): ort.Tensor {
    return new ort.Tensor("float16", this.rows(layer, kind, 0, this.length), [1, this.length, KV_HEADS, HEAD_DIM]);
  }

  /** Rows [start, end) of one layer's K (kind 0) or V (kind 1). */
  rows(layer: number, kind: 0 | 1, start: number, end: number): Uint16Array {
    return this.block(layer, kind).subarray(start * ROW, end * ROW);
  }

  /** Writes `bits` (n rows) at positions length .. length+n-1 (reserve first); `advance` makes them part of the past. */
  write(layer: number, kind: 0 | 1, bits: Uint16Array): void {
    const at = this.length * ROW;
    if (at + bits.length > this.capacity * ROW) throw new Error(`KV cache holds ${this.capacity} tokens; reserve before writing`);
    this.block(layer, kind).set(bits, at);
  }

  advance(n: number): void {
    if (this.length + n > this.capacity) throw new Error(`KV cache holds ${this.capacity} tokens`);
    this.length += n;
  }

  /** Gives the block back to ort's heap; the cache is empty and unusable afterwards. */
  dispose(): void {
    if (this.at) ortHeap()!.free(this.at);
    this.at = 0;
    this.js = null;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** The float16 bit patterns of an ort float16 tensor (its data is a Float16Array where the runtime has one). */
export function f16Bits(t: ort.Tensor): Uint16Array {
  const d = t.data as Uint16Array;
  return new Uint16Array(d.buffer, d.byteOffset, d.length);
}
