/**
 * Chooses the backend for one generation step and falls back when it cannot serve.
 *
 * Light steps run on the embedded edge model; a step goes to the GPU backend when one is
 * configured (GPU_BACKEND_URL) and the step is heavy: a prefill of more new tokens than
 * GPU_PREFILL_THRESHOLD, or a model the edge does not hold. A backend that fails before its first
 * event is skipped for the next candidate; when none is left the request gets 503
 * `backend_unavailable`. Once a backend has produced an event the step stays with it.
 */
import type { Bindings } from "../env";
import { HttpError } from "../errors";
import { getEdgeBackend } from "./edge";
import { GpuHttpBackend } from "./gpu-http";
import type { Backend, GenerateEvent, GenerateRequest } from "./types";

/** New prompt tokens above which a prefill counts as heavy (CPU wasm prefill is ~ms per token). */
export const DEFAULT_GPU_PREFILL_THRESHOLD = 512;

export interface Backends {
  edge: Backend | null;
  gpu: Backend | null;
}

export function backendsFor(env: Bindings): Backends {
  return {
    edge: getEdgeBackend(env),
    gpu: env.GPU_BACKEND_URL ? new GpuHttpBackend(env) : null,
  };
}

/** Every model id some configured backend serves, each once. */
export function listModels(b: Backends): string[] {
  return [...new Set([...(b.edge?.models() ?? []), ...(b.gpu?.models() ?? [])])];
}

export interface StepInfo {
  model: string;
  /** Prompt tokens the backend has to prefill (prompt length minus what restored chunks cover). */
  newPrefillTokens: number;
  threshold: number;
  /** The step applies a LoRA adapter: only the GPU backend can. */
  adapter?: boolean;
}

/**
 * Backends to try, best first.
 *
 * @example
 * ```ts
 * candidates({ edge, gpu }, { model: "smollm2-135m-instruct", newPrefillTokens: 40, threshold: 512 }) // [edge, gpu]
 * candidates({ edge, gpu }, { model: "smollm2-135m-instruct", newPrefillTokens: 900, threshold: 512 }) // [gpu, edge]
 * ```
 */
export function candidates(b: Backends, step: StepInfo): Backend[] {
  const edge = !step.adapter && b.edge?.models().includes(step.model) ? b.edge : null;
  const gpu = b.gpu?.models().includes(step.model) ? b.gpu : null;
  const heavy = !edge || step.newPrefillTokens > step.threshold;
  const order = heavy ? [gpu, edge] : [edge, gpu];
  return order.filter((x): x is Backend => x !== null);
}

export function prefillThreshold(env: Bindings): number {
  const v = env.GPU_PREFILL_THRESHOLD;
  const n = Number(v);
  return v !== undefined && v !== "" && Number.isFinite(n) && n >= 0 ? n : DEFAULT_GPU_PREFILL_THRESHOLD;
}

/** A generation that has already produced its first event. */
export interface StartedGeneration {
  backend: Backend;
  request: GenerateRequest;
  /** All events, the first one included. */
  events: AsyncIterable<GenerateEvent>;
}

/**
 * Starts the step on the first candidate that produces an event; `makeRequest` builds the request
 * per backend because which restored chunks are usable depends on who reads them.
 */
export async function startGeneration(
  cands: Backend[],
  makeRequest: (b: Backend) => Promise<GenerateRequest>,
  signal?: AbortSignal,
): Promise<StartedGeneration> {
  const failures: string[] = [];
  for (const backend of cands) {
    let it: AsyncIterator<GenerateEvent> | undefined;
    try {
      const request = await makeRequest(backend);
      const iter = backend.generate(request, signal)[Symbol.asyncIterator]();
      it = iter;
      const first = await iter.next();
      return { backend, request, events: resume(first, iter) };
    } catch (err) {
      if (signal?.aborted) throw err;
      console.warn(`backend ${backend.name} failed before its first event`, err);
      failures.push(backend.name);
      await it?.return?.().catch(() => {});
    }
  }
  throw new HttpError(503, {
    message: failures.length
      ? `No backend could serve this request (tried: ${failures.join(", ")}). Retry later.`
      : "No backend serves this model right now. Retry later.",
    code: "backend_unavailable",
    headers: { "Retry-After": "5" },
  });
}

async function* resume(first: IteratorResult<GenerateEvent>, it: AsyncIterator<GenerateEvent>) {
  try {
    if (first.done) return;
    yield first.value;
    for (let r = await it.next(); !r.done; r = await it.next()) yield r.value;
  } finally {
    await it.return?.();
  }
}
