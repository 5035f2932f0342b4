import { Hono } from "hono";
import type { Context } from "hono";
import { backendsFor, candidates, listModels, prefillThreshold, startGeneration } from "../backends/dispatch";
import type { StartedGeneration } from "../backends/dispatch";
import { encodeChatPrompt, readChunk } from "../backends/edge";
import type { AppEnv } from "../env";
import { HttpError } from "../errors";
import { sha256Hex } from "../middleware/auth";
import { parseChatRequest, parseJson } from "../schemas";
import type { ChatMessage, ChatRequest } from "../schemas";
import { commonPrefix, loadVerifiedChunks } from "../sessions/restore";
import type { Restored } from "../sessions/restore";
import { acquireLease, commitTurn, getSession, releaseLease } from "../sessions/store";
import { getAdapter, getAdapterFiles } from "../adapters/store";
import type { AdapterFiles } from "../backends/types";
import type { ChunkRef, Lease, NewChunk, SessionRecord } from "../sessions/store";

/** SmolLM2's context window: prompt plus completion must fit. */
export const CONTEXT_TOKENS = 8192;

/** `POST /v1/chat/completions`, OpenAI-compatible, plus `session_id` for resumable turns. */
export const chat = new Hono<AppEnv>();

chat.post("/", async (c) => {
  const req = parseChatRequest(parseJson(await c.req.text()));
  const turn = await prepareTurn(c, req);
  return req.stream ? streamTurn(c, req, turn) : c.json(await completeTurn(req, turn));
});

interface Turn {
  id: string;
  created: number;
  promptIds: number[];
  messages: ChatMessage[];
  session: SessionRecord | null;
  lease: Lease | null;
  gen: StartedGeneration;
  restored: Restored;
  env: AppEnv["Bindings"];
}

interface TurnResult {
  text: string;
  finishReason: "stop" | "length";
  usage: Usage;
}

interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}

/** Everything that can still fail with a clean HTTP status happens here, before any byte is sent. */
async function prepareTurn(c: Context<AppEnv>, req: ChatRequest): Promise<Turn> {
  const env = c.env;
  const session = req.sessionId ? await getSession(env.SESSIONS, req.sessionId, c.var.apiKey.tenant) : null;
  const backends = backendsFor(env);
  const { base, adapter } = await resolveModel(c, req.model, backends);
  const messages = session ? [...session.messages, ...req.messages] : req.messages;
  const promptIds = await encodeChatPrompt(env, messages);
  if (promptIds.length + req.maxTokens > CONTEXT_TOKENS)
    throw new HttpError(400, {
      message: `This model's context is ${CONTEXT_TOKENS} tokens; the messages take ${promptIds.length} and ${req.maxTokens} more were requested.`,
      param: "messages",
      code: "context_length_exceeded",
    });
  const lease = session ? await acquireLease(env.SESSIONS, session) : null;
  try {
    const cached = session ? storedPrefix(session, promptIds) : 0;
    const step = { model: base, newPrefillTokens: promptIds.length - cached, threshold: prefillThreshold(env), adapter: !!adapter };
    let restored: Restored = { restored: [], kept: [], restoredTokens: 0 };
    const gen = await startGeneration(
      candidates(backends, step),
      async (backend) => {
        restored = session
          ? await loadVerifiedChunks(env.BLOBS, session, promptIds, backend)
          : { restored: [], kept: [], restoredTokens: 0 };
        return {
          model: base,
          ...(adapter ? { adapter } : {}),
          promptIds,
          restored: restored.restored,
          sampling: {
            maxTokens: req.maxTokens,
            temperature: req.temperature,
            topP: req.topP,
            seed: req.seed,
            stop: req.stop,
          },
        };
      },
      c.req.raw.signal,
    );
    return {
      id: "chatcmpl-" + crypto.randomUUID().replaceAll("-", ""),
      created: Math.floor(Date.now() / 1000),
      promptIds,
      messages,
      session,
      lease,
      gen,
      restored,
      env,
    };
  } catch (err) {
    if (session && lease) await releaseLease(env.SESSIONS, session.id, lease);
    throw err;
  }
}

/**
 * `model` is a served model id, or `<base>:<adapter id>` for one of the tenant's LoRA adapters (whose
 * files go to the GPU backend with the step). Anything else, another tenant's adapter included, is 404.
 */
async function resolveModel(c: Context<AppEnv>, model: string, backends: ReturnType<typeof backendsFor>): Promise<{ base: string; adapter: AdapterFiles | null }> {
  const notFound = () =>
    new HttpError(404, { message: `The model '${model}' does not exist or is not served here.`, param: "model", code: "model_not_found" });
  const served = listModels(backends);
  if (served.includes(model)) return { base: model, adapter: null };
  const cut = model.lastIndexOf(":");
  const base = model.slice(0, cut);
  if (cut <= 0 || !backends.gpu?.models().includes(base)) throw notFound();
  const tenant = c.var.apiKey.tenant;
  const id = model.slice(cut + 1);
  const meta = /^[a-z0-9][a-z0-9_-]{0,63}$/.test(id) ? await getAdapter(c.env.BLOBS, tenant, id) : null;
  const files = meta && meta.model === base ? await getAdapterFiles(c.env.BLOBS, tenant, id) : null;
  if (!meta || !files) throw notFound();
  return { base, adapter: { key: meta.key, ...files } };
}

/** Tokens of the prompt that the session's stored chunks could cover, before any verification. */
function storedPrefix(rec: SessionRecord, promptIds: number[]): number {
  const limit = Math.min(commonPrefix(rec.tokenIds, promptIds), promptIds.length - 1);
  let end = 0;
  for (const ch of rec.chunks) if (ch.tokenStart === end && ch.tokenEnd <= limit) end = ch.tokenEnd;
  return end;
}

/** Runs the generation to its end, calling `onText` per token, then commits the session turn. */
async function runTurn(turn: Turn, onText: (text: string) => Promise<void>): Promise<TurnResult> {
  const ids: number[] = [];
  let text = "";
  let newChunk: Uint8Array | null = null;
  let done: { finishReason: "stop" | "length"; cachedTokens: number } | null = null;
  try {
    for await (const ev of turn.gen.events) {
      if (ev.type === "token") {
        ids.push(ev.id);
        text += ev.text;
        if (ev.text) await onText(ev.text);
      } else if (ev.type === "kv") newChunk = ev.chunk;
      else if (ev.type === "done") done = { finishReason: ev.finishReason, cachedTokens: ev.cachedTokens };
    }
    if (!done) throw new Error(`backend ${turn.gen.backend.name} ended without a done event`);
    if (turn.session && turn.lease) await commit(turn, ids, text, newChunk);
  } finally {
    if (turn.session && turn.lease) await releaseLease(turn.env.SESSIONS, turn.session.id, turn.lease);
  }
  const prompt = turn.promptIds.length;
  return {
    text,
    finishReason: done.finishReason,
    usage: {
      prompt_tokens: prompt,
      completion_tokens: ids.length,
      total_tokens: prompt + ids.length,
      prompt_tokens_details: { cached_tokens: done.cachedTokens },
    },
  };
}

async function commit(turn: Turn, ids: number[], text: string, bytes: Uint8Array | null): Promise<void> {
  const rec = turn.session!;
  const tokenIds = [...turn.promptIds, ...ids];
  let chunks: ChunkRef[] = turn.restored.kept;
  let chunk: NewChunk | null = null;
  const parsed = bytes ? await readChunk(bytes) : null;
  if (parsed && parsed.tokenEnd <= tokenIds.length && parsed.tokenStart < parsed.tokenEnd) {
    // The new chunk continues the chunks the backend was given (or all it used of them).
    const prefix = chunks.filter((ch) => ch.tokenEnd <= parsed.tokenStart);
    const end = prefix.length ? prefix[prefix.length - 1]!.tokenEnd : 0;
    if (end === parsed.tokenStart) {
      chunks = prefix;
      chunk = {
        bytes: bytes!,
        tokenStart: parsed.tokenStart,
        tokenEnd: parsed.tokenEnd,
        producer: parsed.producer,
        sha256: await sha256Hex(bytes!),
      };
    }
  } else if (bytes) console.warn("backend returned an unusable KV chunk; the next turn recomputes", turn.gen.backend.name);
  await commitTurn(
    turn.env.SESSIONS,
    turn.env.BLOBS,
    turn.lease!,
    {
      id: rec.id,
      tenant: rec.tenant,
      created: rec.created,
      turns: rec.turns + 1,
      messages: [...turn.messages, { role: "assistant", content: text }],
      tokenIds,
      chunks,
      nextChunk: rec.nextChunk,
    },
    chunk,
  );
}

async function completeTurn(req: ChatRequest, turn: Turn) {
  const r = await runTurn(turn, async () => {});
  return {
    id: turn.id,
    object: "chat.completion",
    created: turn.created,
    model: req.model,
    system_fingerprint: `reprise-${turn.gen.backend.name}`,
    choices: [
      { index: 0, message: { role: "assistant", content: r.text, refusal: null }, logprobs: null, finish_reason: r.finishReason },
    ],
    usage: r.usage,
  };
}

/**
 * Server-sent events in OpenAI's format: a `chat.completion.chunk` per piece of text, a last chunk
 * with `finish_reason`, a usage chunk with empty `choices` if `stream_options.include_usage`, then
 * `data: [DONE]`. An error after the first byte can no longer change the status; it is sent as an
 * `{"error": …}` event and the stream ends without `[DONE]`.
 */
function streamTurn(c: Context<AppEnv>, req: ChatRequest, turn: Turn): Response {
  const enc = new TextEncoder();
  const { readable, writable } = new TransformStream<Uint8Array, Uint8Array>();
  const w = writable.getWriter();
  const send = (data: unknown) => w.write(enc.encode(`data: ${typeof data === "string" ? data : JSON.stringify(data)}\n\n`));
  const base = { id: turn.id, object: "chat.completion.chunk", created: turn.created, model: req.model, system_fingerprint: `reprise-${turn.gen.backend.name}` };
  const chunk = (delta: object, finish: string | null) => ({
    ...base,
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
    ...(req.includeUsage ? { usage: null } : {}),
  });
  const pump = async () => {
    try {
      await send(chunk({ role: "assistant", content: "" }, null));
      const r = await runTurn(turn, (text) => send(chunk({ content: text }, null)));
      await send(chunk({}, r.finishReason));
      if (req.includeUsage) await send({ ...base, choices: [], usage: r.usage });
      await send("[DONE]");
    } catch (err) {
      const e = err instanceof HttpError ? err : new HttpError(500, { message: "Internal server error" });
      if (!(err instanceof HttpError)) console.error("stream failed", err);
      await send(e.toBody()).catch(() => {});
    } finally {
      await w.close().catch(() => {});
    }
  };
  const pumping = pump();
  try {
    c.executionCtx.waitUntil(pumping); // the turn commits even if the client stops reading
  } catch {
    // no ExecutionContext (app.request in unit tests): the open stream keeps the work alive
  }
  return new Response(readable, {
    headers: { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache", connection: "keep-alive" },
  });
}
