/**
 * onnxruntime-web inside workerd: its wasm, precompiled at deploy time, handed to emscripten; the
 * session options every edge session uses; and the size of ort's wasm memory.
 *
 * workerd refuses to compile WebAssembly from bytes at run time, so ort's wasm arrives as a module
 * compiled at deploy time (wrangler's CompiledWasm rule for **\/*.wasm) and is handed to emscripten
 * when ort instantiates it (see `withPrecompiledOrtWasm`).
 */
import * as ort from "onnxruntime-web/wasm";
import ortWasm from "onnxruntime-web/ort-wasm-simd-threaded.wasm";

export { ort };

/** Second half of the producer fingerprint: the runtime and build that computed the KV values. */
export const ORT_TAG = "ort-web-1.30.0-wasm";

/**
 * Options of every edge session. Memory first: no arena (ORT's arena grows in doubling chunks and
 * keeps them), no memory pattern (a planned block per input shape), no constant folding, which
 * would turn the graphs' per-run dequantization of the 4- and 8-bit weights (and their float16
 * scales) into float32 initializers: 32 bits per weight resident instead of 5 or 8.5,
 * and only the basic graph rewrites: the extended ones (layout and transpose rewrites) keep
 * transposed copies of initializers, 8 MB more for no measured speed (bench/results/edge-*).
 */
export function sessionOptions(externalData: { path: string; data: Uint8Array }): ort.InferenceSession.SessionOptions {
  return {
    executionProviders: ["wasm"],
    graphOptimizationLevel: "basic",
    enableCpuMemArena: false,
    enableMemPattern: false,
    externalData: [externalData],
    extra: { optimization: { disable_specified_optimizers: "ConstantFolding" } },
  };
}

let ortMemory: WebAssembly.Memory | null = null;
let memoryLimit = 0;

/**
 * Caps ort's wasm memory at `bytes` (0: no cap). Past it, ort's allocations fail and the step
 * throws ("Failed to allocate"): a deployed Worker would be stopped there, so this is how tests and
 * the local runtime hold the edge model to the isolate's budget.
 */
export function limitOrtMemory(bytes: number): void {
  memoryLimit = bytes;
}

/**
 * emscripten grows ort's heap by 20% of its size at a time (its resize policy), which at 100 MB
 * leaves up to 20 MB of memory that nothing uses but the isolate pays for. The resize import is
 * wrapped so that the grow it does asks for what was requested plus 1 MiB, and refuses growth past
 * the cap; emscripten then refreshes its views as after any growth. Found by its body (the one
 * import that calls `.grow(`); if ort's build changes shape, the default policy stays.
 */
function exactGrowth(imports: WebAssembly.Imports | undefined, memory: WebAssembly.Memory): void {
  let wanted = 0;
  let wrapped = 0;
  for (const ns of Object.values(imports ?? {}))
    for (const [name, f] of Object.entries(ns ?? {}))
      if (typeof f === "function" && f.toString().includes(".grow(")) {
        (ns as Record<string, unknown>)[name] = (requested: number) => {
          wanted = requested >>> 0;
          try {
            return (f as (n: number) => unknown)(requested);
          } finally {
            wanted = 0;
          }
        };
        wrapped++;
      }
  if (wrapped !== 1) return;
  const grow = WebAssembly.Memory.prototype.grow;
  memory.grow = function (pages: number): number {
    if (wanted) {
      const have = this.buffer.byteLength;
      pages = Math.min(pages, Math.ceil((wanted - have) / 65536) + 16);
      if (memoryLimit && have + pages * 65536 > memoryLimit) throw new RangeError("edge model: ort wasm memory over its limit");
    }
    return grow.call(this, pages);
  };
}

function findMemory(imports: WebAssembly.Imports | undefined): WebAssembly.Memory | null {
  for (const ns of Object.values(imports ?? {}))
    for (const v of Object.values(ns ?? {})) if (v instanceof WebAssembly.Memory) return v;
  return null;
}

/** ort's own allocator, for buffers that should live in its wasm memory (see `ortHeap`). */
export interface OrtHeap {
  memory: WebAssembly.Memory;
  malloc(bytes: number): number;
  free(ptr: number): void;
}

let heap: OrtHeap | null | undefined;
let ortExports: WebAssembly.Exports | null = null;
/** emscripten's minified export names of malloc and free in onnxruntime-web 1.30.0's wasm (its glue: `_malloc=c.wb`, `_free=c.vb`). */
const ALLOCATOR_EXPORTS: Record<string, { malloc: string; free: string }> = { "1.30.0": { malloc: "wb", free: "vb" } };

/**
 * malloc/free of ort's wasm heap, or null before ort loads or for another ort build. Buffers the edge
 * model keeps beside ort (the weight staging buffer while sessions load, the KV cache during a turn)
 * live there: what ort frees after loading is then reused for them instead of the isolate holding
 * both (ort's wasm memory never shrinks). Checked once, after ort is initialized (a session exists),
 * with a small allocation.
 */
export function ortHeap(): OrtHeap | null {
  if (heap === undefined && ortExports && ortMemory) heap = findAllocator(ortExports, ortMemory);
  return heap ?? null;
}

function findAllocator(exports: WebAssembly.Exports, memory: WebAssembly.Memory): OrtHeap | null {
  const names = ALLOCATOR_EXPORTS[ort.env.versions.web ?? ""];
  const malloc = names && exports[names.malloc], free = names && exports[names.free];
  if (typeof malloc !== "function" || typeof free !== "function") return null;
  const p = (malloc as (n: number) => number)(64);
  if (!(p > 0 && p % 8 === 0 && p + 64 <= memory.buffer.byteLength)) return null;
  (free as (p: number) => void)(p);
  return { memory, malloc: malloc as (n: number) => number, free: free as (p: number) => void };
}

/** Size of ort's wasm linear memory (its high-water mark: wasm memory never shrinks), or 0 before load. */
export function ortHeapBytes(): number {
  return ortMemory?.buffer.byteLength ?? 0;
}

/**
 * Runs `create` with WebAssembly.instantiate redirected to the precompiled ort module. Only calls
 * that pass bytes are redirected (workerd would reject them anyway); a caller passing a compiled
 * module, like our codec's wasm, is untouched. ort is told `wasmBinary = <placeholder bytes>` so
 * that its emscripten glue takes the ArrayBuffer path, which ends in WebAssembly.instantiate.
 */
export async function withPrecompiledOrtWasm<T>(create: () => Promise<T>): Promise<T> {
  ort.env.wasm.numThreads = 1; // no SharedArrayBuffer workers in workerd
  ort.env.wasm.proxy = false;
  ort.env.wasm.wasmBinary = PLACEHOLDER;
  const original = WebAssembly.instantiate;
  const redirected = ((source: unknown, imports?: WebAssembly.Imports) => {
    if (source instanceof WebAssembly.Module) return original(source, imports);
    const memory = findMemory(imports);
    if (memory) exactGrowth(imports, memory);
    return original(ortWasm, imports).then((instance) => {
      ortMemory = memory ?? findMemory({ exports: instance.exports });
      ortExports = instance.exports;
      return { instance, module: ortWasm };
    });
  }) as typeof WebAssembly.instantiate;
  WebAssembly.instantiate = redirected;
  try {
    return await create();
  } finally {
    if (WebAssembly.instantiate === redirected) WebAssembly.instantiate = original;
  }
}

/** The wasm magic and version: enough bytes for ort to take the "binary given" path. */
const PLACEHOLDER = new Uint8Array([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]);
