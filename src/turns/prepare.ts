/**
 * The first half of a turn: everything that can still fail with a clean HTTP status (unknown
 * model, context too long, session busy, no backend) happens here, before any byte is sent.
 */
import { adapterForStep, resolveModel } from "../adapters/resolve";
import { backendsFor, prefillThreshold, route, startGeneration } from "../backends/dispatch";
import { encodeChatPrompt } from "../backends/edge";
import type { Bindings } from "../env";
import { HttpError } from "../errors";
import type { ChatRequest } from "../schemas";
import { commonPrefix, loadVerifiedChunks } from "../sessions/restore";
import type { Restored } from "../sessions/restore";
import { acquireLease, getSession, releaseLease } from "../sessions/store";
import type { SessionRecord } from "../sessions/store";
import { grantSigner } from "../storage/grants";
import { fetchesStorage } from "../sessions/granted";
import { planGrantedTurn } from "./resume";
import type { Turn, TurnResume } from "./types";

/** SmolLM2's context window: prompt plus completion must fit. */
export const CONTEXT_TOKENS = 8192;

const noRestore = (): Restored => ({ restored: [], kept: [], restoredTokens: 0 });

/**
 * Loads the session, builds the prompt, takes the session's lease and starts the generation on
 * the first backend that can serve it. On failure the lease is released again.
 *
 * @example
 * ```ts
 * const turn = await prepareTurn(env, "tenant-a", parseChatRequest(body), request.signal);
 * const result = await runTurn(turn, async () => {});
 * ```
 */
export async function prepareTurn(env: Bindings, tenant: string, req: ChatRequest, signal?: AbortSignal): Promise<Turn> {
  const session = req.sessionId ? await getSession(env.SESSIONS, req.sessionId, tenant) : null;
  const backends = backendsFor(env);
  const signer = grantSigner(env);
  // Adapters run on the GPU backend only: with grants, it fetches the adapter's files from R2 itself.
  const { base, adapter } = await resolveModel(env.BLOBS, tenant, req.model, backends, !!signer && !!backends.gpu && fetchesStorage(backends.gpu));
  const messages = session ? [...session.messages, ...req.messages] : req.messages;
  const promptIds = await encodeChatPrompt(env, messages);
  if (promptIds.length + req.maxTokens > CONTEXT_TOKENS)
    throw new HttpError(400, {
      message: `This model's context is ${CONTEXT_TOKENS} tokens; the messages take ${promptIds.length} and ${req.maxTokens} more were requested.`,
      param: "messages",
      code: "context_length_exceeded",
    });
  const lease = session ? await acquireLease(env, session) : null;
  try {
    const cached = session ? storedPrefix(session, promptIds) : 0;
    const { backends: order, maxTokens } = route(backends, {
      model: base,
      adapter: !!adapter,
      newPrefillTokens: promptIds.length - cached,
      threshold: prefillThreshold(env),
      maxTokens: req.maxTokens,
      maxTokensGiven: req.maxTokensGiven,
    });
    let restored = noRestore();
    let resume: TurnResume | null = null;
    const gen = await startGeneration(
      order,
      async (backend) => {
        const sampling = { maxTokens, temperature: req.temperature, topP: req.topP, seed: req.seed, stop: req.stop };
        const grants = signer && fetchesStorage(backend) ? signer : null;
        const step = adapter ? { adapter: await adapterForStep(adapter, grants) } : {};
        if (grants) {
          // The backend fetches and stores chunks itself: no chunk byte passes through this isolate.
          const p = await planGrantedTurn(env, grants, backend, req, session, promptIds);
          restored = { restored: [], kept: p.kept, restoredTokens: 0 };
          resume = p.resume;
          return { model: base, ...step, promptIds, restored: [], sampling, storage: p.storage };
        }
        resume = null;
        restored = session ? await loadVerifiedChunks(env.BLOBS, session, promptIds, backend) : noRestore();
        return { model: base, ...step, promptIds, restored: restored.restored, sampling };
      },
      signal,
    );
    return {
      id: "chatcmpl-" + crypto.randomUUID().replaceAll("-", ""),
      created: Math.floor(Date.now() / 1000),
      req,
      promptIds,
      messages,
      session,
      lease,
      gen,
      restored,
      resume,
      env,
    };
  } catch (err) {
    if (session && lease) await releaseLease(env, session.id, lease);
    throw err;
  }
}

/** Tokens of the prompt that the session's stored chunks could cover, before any verification. */
function storedPrefix(rec: SessionRecord, promptIds: number[]): number {
  const limit = Math.min(commonPrefix(rec.tokenIds, promptIds), promptIds.length - 1);
  let end = 0;
  for (const ch of rec.chunks) if (ch.tokenStart === end && ch.tokenEnd <= limit) end = ch.tokenEnd;
  return end;
}
