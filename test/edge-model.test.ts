// The embedded edge model inside workerd: tokenizer and chat template against transformers,
// generation through the Backend against the Python onnxruntime run, seeded sampling, stop
// sequences, and KV restore. Loading ort's wasm and the model takes seconds, so every test that
// needs them lives in this one file.
import { env } from "cloudflare:workers";
import { beforeAll, describe, expect, it } from "vitest";
import type { GenerateEvent, GenerateRequest, KvChunk } from "../src/backends/types";
import { EDGE_MODEL_ID, EdgeBackend } from "../src/edge-model/backend";
import { encodeChat, renderChat } from "../src/edge-model/chat-template";
import { loadEdgeModel } from "../src/edge-model/onnx-session";
import { EdgeTokenizer, loadTokenizer } from "../src/edge-model/tokenizer";
import { decodeChunk, encodeChunk } from "../src/sessions/chunk";
import { codecWasm } from "../src/kv-codec/wasm";
import { limitOrtMemory, ortHeapBytes } from "../src/edge-model/ort-runtime";
import greedyFx from "./fixtures/edge-greedy.json";
import tokFx from "./fixtures/edge-tokenizer.json";

const backend = new EdgeBackend(env);
// ort's wasm heap after a 512-token light step of the q8h model (dequant form), measured in this file
// at 142.0 MiB on 2026-12-02; over 122 MiB (Workers' 128 MB) by itself, see bench/results/edge-memory-*.
const ORT_HEAP_BOUND_MIB = 146;
let tok: EdgeTokenizer;

interface Run {
  ids: number[];
  text: string;
  chunks: Uint8Array[];
  finishReason: string;
  cachedTokens: number;
}

async function run(promptIds: number[], sampling: Partial<GenerateRequest["sampling"]> = {}, restored: KvChunk[] = []): Promise<Run> {
  const req: GenerateRequest = {
    model: EDGE_MODEL_ID,
    promptIds,
    restored,
    sampling: { maxTokens: 8, temperature: 0, topP: 1, stop: [], ...sampling },
  };
  const out: Run = { ids: [], text: "", chunks: [], finishReason: "", cachedTokens: -1 };
  const events: GenerateEvent[] = [];
  for await (const ev of backend.generate(req)) events.push(ev);
  for (const ev of events) {
    if (ev.type === "token") {
      out.ids.push(ev.id);
      out.text += ev.text;
    } else if (ev.type === "kv") out.chunks.push(ev.chunk);
    else if (ev.type === "done") {
      out.finishReason = ev.finishReason;
      out.cachedTokens = ev.cachedTokens;
    }
  }
  expect(events.at(-1)?.type).toBe("done");
  return out;
}

async function chunkOf(bytes: Uint8Array): Promise<KvChunk> {
  const r = await decodeChunk(bytes);
  if (!r.ok) throw new Error(r.error);
  return r.chunk;
}

beforeAll(async () => {
  const t0 = Date.now();
  const model = await loadEdgeModel(env.BLOBS, env.EDGE_MODEL_KEY);
  tok = await loadTokenizer(env.BLOBS, env.EDGE_MODEL_KEY);
  console.log(`edge model loaded in ${model.loadMs} ms (${(model.modelBytes / 2 ** 20).toFixed(1)} MiB), tokenizer by ${Date.now() - t0} ms`);
}, 180_000);

describe("Edge tokenizer", () => {
  it("should encode and decode like transformers", () => {
    for (const c of tokFx.texts) {
      expect(tok.encode(c.text), c.text).toEqual(c.ids);
      expect(tok.decode(c.ids), c.text).toBe(c.decoded);
    }
  });

  it("should stream text without ever splitting a UTF-8 character", () => {
    const emojiCase = tokFx.texts.find((c) => c.text.includes("🙂"))!;
    const d = tok.decoder();
    const pieces = emojiCase.ids.map((id) => d.push(id));
    pieces.push(d.flush());
    expect(pieces.join("")).toBe(emojiCase.text);
    for (const p of pieces) expect(p).not.toContain("\uFFFD");
    // The emoji's four bytes arrive in more than one token, so some pushes must have held bytes back.
    expect(emojiCase.ids.some((id) => tok.tokenBytes(id).some((b) => b >= 0x80 && b < 0xc0))).toBe(true);
  });

  it("should skip special tokens when asked", () => {
    const ids = tok.encode("<|im_start|>user\nhi<|im_end|>");
    expect(ids[0]).toBe(1);
    expect(tok.decode(ids, { skipSpecial: true })).toBe("user\nhi");
  });
});

describe("Chat template", () => {
  it("should render and tokenize like apply_chat_template", () => {
    for (const c of tokFx.chats) {
      expect(renderChat(c.messages)).toBe(c.text);
      expect(encodeChat(tok, c.messages)).toEqual(c.ids);
    }
  });

  it("should insert the default system message only when the first message is not a system one", () => {
    expect(renderChat([{ role: "user", content: "Hi" }], false)).toBe(
      "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n",
    );
    expect(renderChat([{ role: "system", content: "S" }, { role: "user", content: "Hi" }])).toBe(
      "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    );
  });
});

describe("EdgeBackend.generate", () => {
  const [first, second] = greedyFx.cases;

  describe("greedy", () => {
    it("should produce the token ids of the Python onnxruntime run", async () => {
      for (const c of [first!, second!]) {
        const r = await run(c.prompt_ids, { maxTokens: greedyFx.max_new_tokens });
        expect(r.ids).toEqual(c.onnx_greedy_ids);
        expect(r.text).toBe(c.onnx_text);
        expect(r.finishReason).toBe(c.onnx_greedy_ids.at(-1) === greedyFx.eos_id ? "stop" : "length");
        expect(r.cachedTokens).toBe(0);
      }
    }, 240_000);
  });

  describe("sampling", () => {
    it("should reproduce a seeded sample and differ across seeds", async () => {
      const s = { maxTokens: 6, temperature: 1.0, topP: 0.95 };
      const a = await run(second!.prompt_ids, { ...s, seed: 1234 });
      const b = await run(second!.prompt_ids, { ...s, seed: 1234 });
      expect(b.ids).toEqual(a.ids);
      expect(b.text).toBe(a.text);
      const others = await Promise.all([99, 7].map((seed) => run(second!.prompt_ids, { ...s, seed })));
      expect(others.some((o) => o.ids.join() !== a.ids.join())).toBe(true);
    }, 180_000);
  });

  describe("stop sequences", () => {
    it("should cut the text before the stop sequence and finish with stop", async () => {
      const r = await run(first!.prompt_ids, { maxTokens: 12, stop: [" Paris"] });
      expect(r.finishReason).toBe("stop");
      expect(r.text).toBe(first!.onnx_text.slice(0, first!.onnx_text.indexOf(" Paris")));
      expect(r.text.length).toBeGreaterThan(0);
      expect(r.ids).toEqual(first!.onnx_greedy_ids.slice(0, r.ids.length));
    }, 120_000);
  });

  describe("KV restore", () => {
    it("should give the same tokens from a restored chunk as from a full recompute", async () => {
      const prompt = first!.prompt_ids;
      const k = prompt.length - 6;
      // Turn A: prefill [0, k) only (one token generated, never fed back): its chunk covers [0, k).
      const a = await run(prompt.slice(0, k), { maxTokens: 1 });
      expect(a.chunks).toHaveLength(1);
      const chunkA = await chunkOf(a.chunks[0]!);
      expect(chunkA.header).toMatchObject({ codec: "edge-kv-v1", layers: 30, kv_heads: 3, head_dim: 64, token_start: 0, token_end: k });
      expect(chunkA.header.producer).toMatch(/^sha256:[0-9a-f]{64}\+ort-web-1\.30\.0-wasm$/);
      // Turn B: the whole prompt with chunk A: only [k, n) is prefilled.
      const b = await run(prompt, { maxTokens: first!.onnx_greedy_ids.length }, [chunkA]);
      expect(b.cachedTokens).toBe(k);
      expect(b.ids).toEqual(first!.onnx_greedy_ids);
      const chunkB = await chunkOf(b.chunks[0]!);
      expect(chunkB.header.token_start).toBe(k);
      expect(chunkB.header.token_end).toBe(prompt.length + b.ids.length - 1);
    }, 180_000);

    it("should store a turn's KV in at most 40% of the raw float32 chunk (46,080 bytes per token)", async () => {
      const c = first!;
      const r = await run(c.prompt_ids, { maxTokens: greedyFx.max_new_tokens });
      const chunk = await chunkOf(r.chunks[0]!);
      const tokens = chunk.header.token_end - chunk.header.token_start;
      expect(tokens).toBe(c.prompt_ids.length + r.ids.length - 1);
      expect(r.chunks[0]!.byteLength / tokens).toBeLessThanOrEqual(0.4 * 46080);
    }, 120_000);

    it("should recompute when a stored chunk's payload was altered (and re-signed), with the same tokens", async () => {
      const prompt = first!.prompt_ids;
      const a = await run(prompt.slice(0, 12), { maxTokens: 1 });
      const real = await chunkOf(a.chunks[0]!);
      const payload = real.payload.slice();
      payload[payload.length >> 1]! ^= 0x40; // a range-coder byte: the block decodes to other values
      const altered = await chunkOf(await encodeChunk(real.header, payload));
      const b = await run(prompt, { maxTokens: 4 }, [altered]);
      expect(b.cachedTokens).toBe(0);
      expect(b.ids).toEqual(first!.onnx_greedy_ids.slice(0, 4));
    }, 120_000);

    it("should recompute from token ids when a chunk is not ours", async () => {
      const prompt = first!.prompt_ids;
      const a = await run(prompt.slice(0, 10), { maxTokens: 1 });
      const real = await chunkOf(a.chunks[0]!);
      const foreign = await chunkOf(await encodeChunk({ ...real.header, producer: "sha256:00+ort-web-1.30.0-wasm" }, real.payload));
      const b = await run(prompt, { maxTokens: 4 }, [foreign]);
      expect(b.cachedTokens).toBe(0);
      expect(b.ids).toEqual(first!.onnx_greedy_ids.slice(0, 4));
      expect((await chunkOf(b.chunks[0]!)).header.token_start).toBe(0);
    }, 120_000);
  });
  // Workers stop an isolate past 128 MB; local workerd enforces no limit, so this holds the part it
  // can measure, ort's wasm heap, to the bound measured for a 512-token light step (the grow past
  // it throws, failing the step). JS heap and the codec's memory come on top: bench/edge_bench.mjs
  // measures the whole isolate (bench/results/summary/edge.json, peak_isolate_MB_512).
  describe("memory", () => {
    it(`should run a 512-token light step with ort's wasm heap at most ${ORT_HEAP_BOUND_MIB} MiB`, async () => {
      const text = "The lighthouse keeper climbed the stairs each evening, counting the steps and the ships. ".repeat(40);
      const ids = tok.encode(text).slice(0, 512);
      expect(ids).toHaveLength(512);
      limitOrtMemory(ORT_HEAP_BOUND_MIB * 2 ** 20);
      try {
        const r = await run(ids, { maxTokens: 8 });
        expect(r.ids).toHaveLength(8);
      } finally {
        limitOrtMemory(0);
      }
      console.log(`ort wasm heap after a 512 + 8 light step: ${(ortHeapBytes() / 2 ** 20).toFixed(1)} MiB`);
      expect(ortHeapBytes()).toBeLessThanOrEqual(ORT_HEAP_BOUND_MIB * 2 ** 20);
    }, 240_000);
  });
});
