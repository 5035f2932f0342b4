/**
 * The embedded edge model as a `Backend`: SmolLM2-135M-Instruct, int4 ONNX, onnxruntime-web in the
 * Worker. One generation step: take the restored chunks that fit as past KV, prefill the rest of
 * the prompt, decode token by token, then emit one KV chunk for exactly the tokens whose KV this
 * turn computed (the uncovered prompt tokens and every generated token that was fed back; the last
 * generated token never was) and a done event.
 */
import type { Backend, GenerateEvent, GenerateRequest } from "../backends/types";
import { DEFAULT_RATES, forwardMs, maxNewTokens, observe, stepBudgetMs, stepMs } from "./budget";
import type { EdgeRates } from "./budget";
import { IM_END_ID } from "./chat-template";
import { chunkOfPast, restoreChunks, usableChunks } from "./kv-chunks";
import { forward, loadEdgeModel, ORT_TAG, PastKv, VOCAB } from "./onnx-session";
import type { EdgeModel } from "./onnx-session";
import { onComputeLane, prefillPieces } from "./pacing";
import { randomSeed, sampleToken, seededRng, StopMatcher } from "./sampling";
import { loadTokenizer } from "./tokenizer";

export { usableChunks } from "./kv-chunks";

export const EDGE_MODEL_ID = "smollm2-135m-instruct";
/** Generated tokens the KV cache makes room for up front: a light step's 64 never grow it. */
const GENERATION_ROOM = 64;

export interface EdgeEnv {
  BLOBS: R2Bucket;
  /** R2 key of the model's manifest (model-files.ts); tokenizer.json beside it (tokenizer.ts). */
  EDGE_MODEL_KEY: string;
  /** Most ms one light step may compute (budget.ts); default 25 000. */
  EDGE_STEP_BUDGET_MS?: string;
}

/** What a light step would cost, decided before it starts (budget.ts). */
export interface StepPlan {
  budgetMs: number;
  /** Prefill piece sizes, in order. */
  pieces: number[];
  estimateMs: number;
  /** The most new tokens that fit the budget (0: not even the prefill fits). */
  maxNewTokens: number;
}

/** This isolate's measured forward-pass costs, shared by every request it serves. */
let rates: EdgeRates = DEFAULT_RATES;

export class EdgeBackend implements Backend {
  readonly name = "edge";
  private producer: string | null = null;

  constructor(private readonly env: EdgeEnv) {}

  models(): string[] {
    return [EDGE_MODEL_ID];
  }

  /**
   * Whether chunks from `producer` can be our past KV. Before the model is loaded its hash is
   * unknown, so any edge producer passes here; `generate` checks the exact fingerprint again.
   */
  acceptsProducer(producer: string): boolean {
    return this.producer ? producer === this.producer : producer.endsWith(`+${ORT_TAG}`);
  }

  /**
   * The cost of a step that prefills `prefillTokens` and generates up to `newTokens`, against the
   * step budget, at this isolate's measured rates.
   */
  plan(prefillTokens: number, newTokens: number): StepPlan {
    const budgetMs = stepBudgetMs(this.env.EDGE_STEP_BUDGET_MS);
    const pieces = prefillPieces(Math.max(1, prefillTokens));
    return { budgetMs, pieces, estimateMs: stepMs(rates, pieces, newTokens), maxNewTokens: maxNewTokens(rates, pieces, budgetMs) };
  }

  async *generate(req: GenerateRequest, signal?: AbortSignal): AsyncGenerator<GenerateEvent> {
    if (req.model !== EDGE_MODEL_ID) throw new Error(`the edge backend does not serve ${req.model}`);
    const ids = req.promptIds;
    if (ids.length === 0) throw new Error("empty prompt");
    for (const id of ids) if (!Number.isInteger(id) || id < 0 || id >= VOCAB) throw new Error(`token id ${id} out of range`);
    const { maxTokens, temperature, topP, stop } = req.sampling;
    const [model, tok] = await Promise.all([
      loadEdgeModel(this.env.BLOBS, this.env.EDGE_MODEL_KEY),
      loadTokenizer(this.env.BLOBS, this.env.EDGE_MODEL_KEY),
    ]);
    this.producer = model.producer;
    signal?.throwIfAborted();

    if (maxTokens < 1) {
      yield { type: "done", finishReason: "length", cachedTokens: usableChunks(req.restored, model.producer, ids.length).at(-1)?.header.token_end ?? 0 };
      return;
    }
    // Room for the prompt and the first tokens fed back; a longer generation grows the cache.
    using past = new PastKv(ids.length + Math.min(maxTokens - 1, GENERATION_ROOM));
    const cached = restoreChunks(past, usableChunks(req.restored, model.producer, ids.length));
    // Compute time this step has used: its own forward passes, not other requests' in between.
    const meter = { spentMs: 0 };
    const budgetMs = stepBudgetMs(this.env.EDGE_STEP_BUDGET_MS);
    let logits: Float32Array = new Float32Array(0);
    for (const n of prefillPieces(ids.length - cached)) {
      ({ logits } = await pacedForward(model, ids.slice(past.length, past.length + n), past, meter));
      signal?.throwIfAborted();
    }

    const rng = seededRng(req.sampling.seed ?? randomSeed());
    const stops = new StopMatcher(stop);
    const text = tok.decoder({ skipSpecial: true });
    let finishReason: "stop" | "length" = "length";
    for (let n = 1; ; n++) {
      const id = sampleToken(logits, { temperature, topP }, rng);
      // Out of budget for one more step: end here (finish_reason "length") rather than be stopped
      // mid-turn by the runtime's CPU limit, which would lose the turn.
      const outOfTime = meter.spentMs + forwardMs(rates, 1) > budgetMs;
      const last = id === IM_END_ID || n >= maxTokens || outOfTime;
      const piece = text.push(id) + (last ? text.flush() : "");
      const s = stops.push(piece);
      if (s.stopped) {
        yield { type: "token", id, text: s.text };
        finishReason = "stop";
        break;
      }
      yield { type: "token", id, text: s.text + (last ? stops.flush() : "") };
      if (id === IM_END_ID) finishReason = "stop";
      if (last) break;
      signal?.throwIfAborted();
      ({ logits } = await pacedForward(model, [id], past, meter));
    }

    yield { type: "kv", chunk: await chunkOfPast(past, cached, model.producer) };
    yield { type: "done", finishReason, cachedTokens: cached };
  }
}

/** One forward pass on the isolate's compute lane (pacing.ts), timed into the isolate's rates and `meter`. */
async function pacedForward(model: EdgeModel, ids: number[], past: PastKv, meter: { spentMs: number }) {
  const { value, ms } = await onComputeLane(() => forward(model, ids, past));
  rates = observe(rates, ids.length, ms);
  meter.spentMs += ms;
  return value;
}
