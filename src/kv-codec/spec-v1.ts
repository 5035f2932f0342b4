/**
 * spec-v1 chunks decoded by the wasm decoder (wasm/src/spec_v1.c), the second implementation of
 * docs/kv-codec-format.md beside the Python reference. The predictor is asked for one layer at a
 * time and shown each decoded layer, as the FP8 speculator needs.
 */
import { CodecStatus, codecWasm, statusName } from "./wasm";

export interface SpecV1Expect {
  fingerprint: string;
  layers: number;
  kvHeads: number;
  headDim: number;
  tokenStart: number;
  tokenEnd: number;
}

export interface SpecV1Predictor {
  /** float32 [2, kvHeads, tokens, headDim] in value units. */
  predict(layer: number): Float32Array;
  /** The decoded layer as float32, same shape (optional). */
  observe?(layer: number, values: Float32Array): void;
}

export type SpecV1Decoded =
  | { status: "OK"; mode: "bf16"; bits: Uint16Array }
  | { status: "OK"; mode: "fp8"; codes: Uint8Array; exps: Int8Array }
  | { status: Exclude<CodecStatus, "OK">; mode?: undefined };

const enc = new TextEncoder();

/**
 * Decodes `data` (a spec-v1 payload) into BF16 bits [L][2][KH][T][D] or FP8 codes + row exponents.
 * Any problem with the bytes is a status, never an exception.
 *
 * @example
 * ```ts
 * const r = decodeSpecV1(payload, { predict: (l) => pred.subarray(l * n, (l + 1) * n) }, expect);
 * if (r.status === "OK" && r.mode === "bf16") use(r.bits);
 * ```
 */
export function decodeSpecV1(data: Uint8Array, predictor: SpecV1Predictor, expect: SpecV1Expect): SpecV1Decoded {
  return decodeWith("spec_v1", data, predictor, expect);
}

/**
 * Decodes a spec-v1 or spec-v2 chunk, picking the decoder by the header's u16 version (bytes 4-5), as
 * gpu-backend/reprise_gpu/codec/api.py chunk_version does; any other version is spec-v1's BAD_VERSION.
 */
export function decodeSpecChunk(data: Uint8Array, predictor: SpecV1Predictor, expect: SpecV1Expect): SpecV1Decoded {
  const v2 = data.byteLength >= 6 && data[4] === 2 && data[5] === 0;
  return decodeWith(v2 ? "spec_v2" : "spec_v1", data, predictor, expect);
}

function decodeWith(v: "spec_v1" | "spec_v2", data: Uint8Array, predictor: SpecV1Predictor, expect: SpecV1Expect): SpecV1Decoded {
  const w = codecWasm();
  const { layers: L, kvHeads: KH, headDim: D, tokenStart: t0, tokenEnd: t1 } = expect;
  const n = KH * Math.max(t1 - t0, 0) * D; // values per segment
  w.reset();
  const dataPtr = w.put(data);
  const fp = enc.encode(expect.fingerprint);
  const fpPtr = w.put(fp);
  let st = w.fn[`${v}_open`](dataPtr, data.byteLength, fpPtr, fp.byteLength, L, KH, D, t0, t1);
  if (st !== 0) return { status: statusName(st) as Exclude<CodecStatus, "OK"> };
  const fp8 = data[6] === 1;
  const width = fp8 ? 1 : 2;
  const predPtr = w.alloc(8 * n);
  const outPtr = w.alloc(2 * n * width);
  const obsPtr = predictor.observe ? w.alloc(8 * n) : 0;
  const out = new Uint8Array(L * 2 * n * width);
  for (let layer = 0; layer < L; layer++) {
    const pred = predictor.predict(layer);
    if (pred.length !== 2 * n) return { status: "SHAPE_MISMATCH" };
    w.f32(predPtr, 2 * n).set(pred);
    st = w.fn[`${v}_layer`](predPtr, outPtr, obsPtr);
    if (st !== 0) return { status: statusName(st) as Exclude<CodecStatus, "OK"> };
    out.set(w.u8(outPtr, 2 * n * width), layer * 2 * n * width);
    if (predictor.observe) predictor.observe(layer, w.f32(obsPtr, 2 * n).slice());
  }
  st = w.fn[`${v}_finish`]();
  if (st !== 0) return { status: statusName(st) as Exclude<CodecStatus, "OK"> };
  if (!fp8) return { status: "OK", mode: "bf16", bits: new Uint16Array(out.buffer) };
  const rows = L * 2 * KH * (t1 - t0);
  const exps = new Int8Array(w.u8(w.fn[`${v}_exps`](), rows).slice().buffer);
  return { status: "OK", mode: "fp8", codes: out, exps };
}
