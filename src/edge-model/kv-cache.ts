/**
 * The edge model's KV cache in the isolate: per layer, K and V as float16 bit patterns (bfloat16
 * precision, see scripts/edge_model/graph.py kv_round), token-major [tokens][KV_HEADS][HEAD_DIM],
 * sized once per turn for the prompt plus the tokens it may generate. Token-major rows let a step
 * append its new rows in place and hand ort a view of exactly the past (no copy in JS; ort copies
 * the view into its wasm memory for the run, one session's layers at a time).
 */
import { ort } from "./ort-runtime";

export const LAYERS = 30;
export const KV_HEADS = 3;
export const HEAD_DIM = 64;
/** 16-bit values per token per layer and K or V. */
export const ROW = KV_HEADS * HEAD_DIM;

export class PastKv {
  /** Tokens whose KV is held: positions 0 .. length-1. */
  length = 0;
  private kv: Uint16Array[]; // [layer * 2 + (0: K, 1: V)] -> capacity * ROW

  /** `capacity`: tokens to make room for now (a turn: its prompt plus the tokens it expects to generate). */
  constructor(public capacity: number) {
    this.kv = Array.from({ length: 2 * LAYERS }, () => new Uint16Array(capacity * ROW));
  }

  /** Room for `tokens` more: grows by half again at least (a copy; sized right, a turn never grows). */
  reserve(tokens: number): void {
    const need = this.length + tokens;
    if (need <= this.capacity) return;
    const cap = Math.max(need, Math.ceil(this.capacity * 1.5));
    this.kv = this.kv.map((old) => {
      const a = new Uint16Array(cap * ROW);
      a.set(old.subarray(0, this.length * ROW));
      return a;
    });
    this.capacity = cap;
  }

  /** ort inputs `past_key.{layer}` / `past_value.{layer}`: views of positions [0, length). */
  tensor(layer: number, kind: 0 | 1): ort.Tensor {
    return new ort.Tensor("float16", this.kv[layer * 2 + kind]!.subarray(0, this.length * ROW), [1, this.length, KV_HEADS, HEAD_DIM]);
  }

  /** Rows [start, end) of one layer's K (kind 0) or V (kind 1). */
  rows(layer: number, kind: 0 | 1, start: number, end: number): Uint16Array {
    return this.kv[layer * 2 + kind]!.subarray(start * ROW, end * ROW);
  }

  /** Writes `bits` (n rows) at positions length .. length+n-1 (reserve first); `advance` makes them part of the past. */
  write(layer: number, kind: 0 | 1, bits: Uint16Array): void {
    const at = this.length * ROW;
    if (at + bits.length > this.capacity * ROW) throw new Error(`KV cache holds ${this.capacity} tokens; reserve before writing`);
    this.kv[layer * 2 + kind]!.set(bits, at);
  }

  advance(n: number): void {
    if (this.length + n > this.capacity) throw new Error(`KV cache holds ${this.capacity} tokens`);
    this.length += n;
  }

  /** Bytes held (the cache is allocated whole when created). */
  get bytes(): number {
    return 2 * LAYERS * this.capacity * ROW * 2;
  }
}

/** The float16 bit patterns of an ort float16 tensor (its data is a Float16Array where the runtime has one). */
export function f16Bits(t: ort.Tensor): Uint16Array {
  const d = t.data as Uint16Array;
  return new Uint16Array(d.buffer, d.byteOffset, d.length);
}
