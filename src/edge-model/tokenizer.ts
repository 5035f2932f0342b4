/**
 * SmolLM2's byte-level BPE tokenizer (bpe.ts), with decoding through the tokens' bytes so that
 * streamed text never splits a UTF-8 character.
 *
 * Where the tokenizer comes from: it is NOT bundled into the Worker. scripts/convert_edge_model.py
 * writes the compact tokenizer file (1.1 MB, from the GGUF's tokenizer.json) and
 * `scripts/seed_local_storage.mjs` stores it in R2 (binding BLOBS) next to the model, at
 * `tokenizerKey(EDGE_MODEL_KEY)`; each isolate reads it once. Only the edge model and the router's
 * prompt encoding need it, and keeping it beside the model keeps the two from drifting apart.
 */
import { Bpe } from "./bpe";

export class EdgeTokenizer {
  readonly vocabSize: number;

  private constructor(private readonly bpe: Bpe) {
    this.vocabSize = bpe.vocabSize;
  }

  /**
   * Parses the compact tokenizer file (scripts/edge_model/tokenizer_file.py).
   *
   * @example
   * ```ts
   * const tok = EdgeTokenizer.fromBytes(new Uint8Array(await (await env.BLOBS.get(tokenizerKey(env.EDGE_MODEL_KEY)))!.arrayBuffer()));
   * tok.encode("Hello world"); // [19556, 905]
   * ```
   */
  static fromBytes(bytes: Uint8Array): EdgeTokenizer {
    return new EdgeTokenizer(new Bpe(bytes));
  }

  /** Token ids of `text`; special-token strings such as `<|im_start|>` become their ids; nothing is added. */
  encode(text: string): number[] {
    return this.bpe.encode(text);
  }

  isSpecial(id: number): boolean {
    return this.bpe.isSpecial(id);
  }

  /** The raw bytes of one token (a piece of UTF-8, not necessarily a whole character). */
  tokenBytes(id: number): Uint8Array {
    return this.bpe.tokenBytes(id);
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

/** R2 key of the tokenizer file for a model key: `models/x.json` (or `.onnx`) -> `models/x.tokenizer.bin`. */
export function tokenizerKey(modelKey: string): string {
  return modelKey.replace(/\.(json|onnx)$/, "") + ".tokenizer.bin";
}

let cached: { key: string; tok: Promise<EdgeTokenizer> } | null = null;

/** The tokenizer stored next to the model in R2, parsed once per isolate. */
export function loadTokenizer(blobs: R2Bucket, modelKey: string): Promise<EdgeTokenizer> {
  const key = tokenizerKey(modelKey);
  if (cached?.key !== key) {
    const tok = (async () => {
      const obj = await blobs.get(key);
      if (!obj) throw new Error(`tokenizer not found in R2 at ${key} (run node scripts/seed_local_storage.mjs)`);
      return EdgeTokenizer.fromBytes(new Uint8Array(await obj.arrayBuffer()));
    })();
    cached = { key, tok };
    tok.catch(() => {
      if (cached?.tok === tok) cached = null; // let the next request retry
    });
  }
  return cached.tok;
}
