/**
 * SmolLM2's byte-level BPE tokenizer: encoding through @huggingface/tokenizers, decoding through our
 * own id -> bytes table so that streamed text never splits a UTF-8 character.
 *
 * Where tokenizer.json comes from: it is NOT bundled into the Worker. `scripts/seed_local_storage.mjs`
 * stores it in R2 (binding BLOBS) next to the model, at `tokenizerKey(EDGE_MODEL_KEY)`, and each
 * isolate reads it once. It is 3.5 MB of JSON that only the edge model and the router's prompt
 * encoding need, and keeping it beside the model keeps the two from drifting apart.
 */
import { Tokenizer } from "@huggingface/tokenizers";

/** GPT-2's byte <-> printable-char table: bytes that are printable map to themselves, others to U+0100+. */
function byteDecoderTable(): Map<string, number> {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  const m = new Map<string, number>();
  bs.forEach((b, i) => m.set(String.fromCodePoint(cs[i]!), b));
  return m;
}

interface TokenizerJson {
  model: { vocab: Record<string, number> };
  added_tokens?: { id: number; content: string; special?: boolean }[];
}

export class EdgeTokenizer {
  readonly vocabSize: number;
  private readonly bytes: Uint8Array[];
  private readonly special: Set<number>;

  private constructor(private readonly tok: Tokenizer, json: TokenizerJson) {
    const table = byteDecoderTable();
    const enc = new TextEncoder();
    const entries = Object.entries(json.model.vocab);
    this.vocabSize = Math.max(...entries.map(([, id]) => id)) + 1;
    this.bytes = new Array<Uint8Array>(this.vocabSize).fill(new Uint8Array(0));
    for (const [piece, id] of entries) {
      const out: number[] = [];
      for (const ch of piece) {
        const b = table.get(ch);
        if (b === undefined) out.push(...enc.encode(ch));
        else out.push(b);
      }
      this.bytes[id] = Uint8Array.from(out);
    }
    this.special = new Set();
    for (const t of json.added_tokens ?? []) {
      this.bytes[t.id] = enc.encode(t.content);
      if (t.special) this.special.add(t.id);
    }
  }

  /**
   * Parses tokenizer.json (the text or the parsed object).
   *
   * @example
   * ```ts
   * const tok = EdgeTokenizer.fromJSON(await (await env.BLOBS.get(tokenizerKey(env.EDGE_MODEL_KEY)))!.text());
   * tok.encode("Hello world"); // [19556, 905]
   * ```
   */
  static fromJSON(json: string | object): EdgeTokenizer {
    const parsed = (typeof json === "string" ? JSON.parse(json) : json) as TokenizerJson;
    if (!parsed?.model?.vocab) throw new Error("tokenizer.json has no model.vocab");
    return new EdgeTokenizer(new Tokenizer(parsed as never, {}), parsed);
  }

  /** Token ids of `text`; special-token strings such as `<|im_start|>` become their ids; nothing is added. */
  encode(text: string): number[] {
    return this.tok.encode(text, { add_special_tokens: false }).ids;
  }

  isSpecial(id: number): boolean {
    return this.special.has(id);
  }

  /** The raw bytes of one token (a piece of UTF-8, not necessarily a whole character). */
  tokenBytes(id: number): Uint8Array {
    const b = this.bytes[id];
    if (b === undefined) throw new RangeError(`token id ${id} is outside the vocabulary`);
    return b;
  }

  /** Text of `ids`; invalid UTF-8 becomes U+FFFD, as in HF's decode. */
  decode(ids: readonly number[], opts: { skipSpecial?: boolean } = {}): string {
    const d = this.decoder(opts);
    let s = "";
    for (const id of ids) s += d.push(id);
    return s + d.flush();
  }

  /** A streaming decoder: `push` returns only complete characters; `flush` returns the rest. */
  decoder(opts: { skipSpecial?: boolean } = {}): IncrementalDecoder {
    return new IncrementalDecoder(this, opts.skipSpecial ?? false);
  }
}

/**
 * Turns token ids into text one token at a time without ever emitting half a UTF-8 character:
 * bytes go through a streaming TextDecoder, which holds an incomplete sequence until the next bytes.
 *
 * @example
 * ```ts
 * const d = tok.decoder({ skipSpecial: true });
 * d.push(idOfFirstHalfOfEmoji); // ""
 * d.push(idOfSecondHalf);       // "🙂"
 * ```
 */
export class IncrementalDecoder {
  private readonly td = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });

  constructor(private readonly tok: EdgeTokenizer, private readonly skipSpecial: boolean) {}

  push(id: number): string {
    if (this.skipSpecial && this.tok.isSpecial(id)) return "";
    return this.td.decode(this.tok.tokenBytes(id), { stream: true });
  }

  flush(): string {
    return this.td.decode();
  }
}

/** R2 key of tokenizer.json for a model key: `models/x.onnx` -> `models/x.tokenizer.json`. */
export function tokenizerKey(modelKey: string): string {
  return modelKey.replace(/\.onnx$/, "") + ".tokenizer.json";
}

let cached: { key: string; tok: Promise<EdgeTokenizer> } | null = null;

/** The tokenizer stored next to the model in R2, parsed once per isolate. */
export function loadTokenizer(blobs: R2Bucket, modelKey: string): Promise<EdgeTokenizer> {
  const key = tokenizerKey(modelKey);
  if (cached?.key !== key) {
    const tok = (async () => {
      const obj = await blobs.get(key);
      if (!obj) throw new Error(`tokenizer not found in R2 at ${key} (run node scripts/seed_local_storage.mjs)`);
      return EdgeTokenizer.fromJSON(await obj.text());
    })();
    cached = { key, tok };
    tok.catch(() => {
      if (cached?.tok === tok) cached = null; // let the next request retry
    });
  }
  return cached.tok;
}
