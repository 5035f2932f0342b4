/**
 * Chooses the backend for one generation step and falls back when it cannot serve.
 *
 * Light steps run on the embedded edge model; a step goes to the GPU backend when one is
 * configured (GPU_BACKEND_URL) and the step is heavy: a prefill of more new tokens than
 * GPU_PREFILL_THRESHOLD, a model the edge does not hold, or a step whose estimated compute does not
 * fit the edge's step budget (src/edge-model/budget.ts). Without a GPU backend such a step is refused
 * before it starts (400 `edge_budget_exceeded`), unless the client left max_tokens unset: then the
 * completion is shortened to what fits. A backend that fails before its first event is skipped for
 * the next candidate; when none is left the request gets 503 `backend_unavailable`. Once a backend
 * has produced an event the step stays with it.
 */
import type { Bindings } from "../env";
import { HttpError } from "../errors";
import type { EdgeBackend } from "../edge-model/backend";
import { getEdgeBackend } from "./edge";
import { GpuHttpBackend } from "./gpu-http";
import type { Backend, GenerateEvent, GenerateRequest } from "./types";

/** New prompt tokens above which a prefill counts as heavy (CPU wasm prefill is ~ms per token). */
export const DEFAULT_GPU_PREFILL_THRESHOLD = 512;

export interface Backends {
  edge: EdgeBackend | null;
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
  /** Completion tokens asked for, and whether the client set them (an unset one may be shortened). */
  maxTokens: number;
  maxTokensGiven: boolean;
}

export interface Route {
  /** Backends to try, best first. */
  backends: Backend[];
  /** max_tokens for the step: the request's, or what fits the edge's budget when it was unset. */
  maxTokens: number;
}

/**
 * Where a step runs, decided before it starts.
 *
 * @example
 * ```ts
 * route({ edge, gpu }, { model: "smollm2-135m-instruct", newPrefillTokens: 40, threshold: 512, maxTokens: 8, maxTokensGiven: true }).backends // [edge, gpu]
 * route({ edge, gpu }, { model: "smollm2-135m-instruct", newPrefillTokens: 900, threshold: 512, maxTokens: 8, maxTokensGiven: true }).backends // [gpu, edge]
 * ```
 */
export function route(b: Backends, step: StepInfo): Route {
  const edge = !step.adapter && b.edge?.models().includes(step.model) ? b.edge : null;
  const gpu = b.gpu?.models().includes(step.model) ? b.gpu : null;
  const plan = edge?.plan(step.newPrefillTokens, step.maxTokens);
  if (edge && plan && plan.estimateMs > plan.budgetMs) {
    if (gpu) return { backends: [gpu], maxTokens: step.maxTokens };
    if (!step.maxTokensGiven && plan.maxNewTokens >= 1) return { backends: [edge], maxTokens: plan.maxNewTokens };
    const s = (ms: number) => (ms / 1000).toFixed(1);
    throw new HttpError(400, {
      message:
        `This step would compute for about ${s(plan.estimateMs)} s on the edge model, over its ${s(plan.budgetMs)} s budget, ` +
        `and no GPU backend is configured. ` +
        (plan.maxNewTokens >= 1
          ? `At most ${plan.maxNewTokens} new tokens fit after this prompt: lower max_tokens.`
          : "Even the prompt does not fit: shorten it."),
      param: plan.maxNewTokens >= 1 ? "max_tokens" : "messages",
      code: "edge_budget_exceeded",
    });
  }
  const heavy = !edge || step.newPrefillTokens > step.threshold;
  const order = heavy ? [gpu, edge] : [edge, gpu];
  return { backends: order.filter((x): x is Backend => x !== null), maxTokens: step.maxTokens };
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
