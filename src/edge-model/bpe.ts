/**
 * SmolLM2's byte-level BPE over token ids, from the compact tokenizer file that
 * scripts/edge_model/tokenizer_file.py writes ("RPTK", format in its docstring).
 *
 * Why not @huggingface/tokenizers in the Worker: parsed from tokenizer.json it holds ~22 MiB of JS
 * strings and maps, a sixth of an isolate's 128 MB. Here the vocabulary never exists as strings:
 * text -> special tokens split off -> GPT-2 pre-tokenizer regex -> UTF-8 bytes -> each byte's token
 * -> merges by rank (lowest first, every occurrence left to right, as GPT-2's and HF's BPE do).
 * About 2 MiB: the merge table as a typed-array hash, token bytes as one blob. Tests hold it to
 * transformers (fixtures) and to @huggingface/tokenizers on random text (test/bpe.test.ts).
 */

/** HF ByteLevel's pre-tokenizer (use_regex): GPT-2's pattern. */
const PIECES = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;
const NO_TOKEN = 0xffffffff;
const HEADER = 28;

export class Bpe {
  readonly vocabSize: number;
  private readonly byteIds: Uint32Array;
  private readonly merges: Uint32Array; // [rank * 3 + (0 left, 1 right, 2 merged)]
  private readonly offsets: Uint32Array;
  private readonly blob: Uint8Array;
  private readonly specialIds: Uint32Array;
  private readonly unk: number;
  // open addressing: key (left << 16 | right) + 1 -> rank; 0 = empty
  private readonly keys: Uint32Array;
  private readonly ranks: Uint32Array;
  private readonly specialText: { id: number; text: string }[];

  constructor(bytes: Uint8Array) {
    const buf = bytes.slice().buffer; // aligned copy, kept: the typed arrays below are views of it
    const v = new DataView(buf);
    const ascii = String.fromCharCode(...new Uint8Array(buf, 0, 4));
    if (bytes.length < HEADER || ascii !== "RPTK" || v.getUint16(4, true) !== 1) throw new Error("not a version 1 RPTK tokenizer file");
    const V = v.getUint32(8, true), M = v.getUint32(12, true), S = v.getUint32(16, true), B = v.getUint32(20, true);
    this.unk = v.getUint32(24, true);
    let at = HEADER;
    const take = (n: number) => {
      const a = new Uint32Array(buf, at, n);
      at += 4 * n;
      return a;
    };
    const need = HEADER + 4 * (256 + 3 * M + V + 1 + S) + B + ((4 - (B % 4)) % 4);
    if (V >= 1 << 16 || bytes.length !== need) throw new Error(`RPTK tokenizer file: ${bytes.length} bytes, expected ${need}`);
    this.vocabSize = V;
    this.byteIds = take(256);
    this.merges = take(3 * M);
    this.offsets = take(V + 1);
    this.blob = new Uint8Array(buf, at, B);
    at += B + ((4 - (B % 4)) % 4);
    this.specialIds = take(S);
    if (this.offsets[V] !== B) throw new Error("RPTK tokenizer file: token offsets do not cover the blob");
    let cap = 1;
    while (cap < 2 * M) cap *= 2;
    this.keys = new Uint32Array(cap);
    this.ranks = new Uint32Array(cap);
    for (let r = 0; r < M; r++) {
      const key = ((this.merges[3 * r]! << 16) | this.merges[3 * r + 1]!) >>> 0;
      let h = this.slot(key);
      while (this.keys[h] !== 0 && this.keys[h] !== key + 1) h = (h + 1) & (cap - 1);
      if (this.keys[h] === 0) (this.keys[h] = key + 1), (this.ranks[h] = r); // the first (lowest) rank wins
    }
    const td = new TextDecoder();
    this.specialText = Array.from(this.specialIds, (id) => ({ id, text: td.decode(this.tokenBytes(id)) })).sort((a, b) => b.text.length - a.text.length);
  }

  private slot(key: number): number {
    return Math.imul(key, 0x9e3779b1) >>> (32 - Math.log2(this.keys.length)) & (this.keys.length - 1);
  }

  private rank(left: number, right: number): number {
    const key = ((left << 16) | right) >>> 0;
    for (let h = this.slot(key); this.keys[h] !== 0; h = (h + 1) & (this.keys.length - 1)) if (this.keys[h] === key + 1) return this.ranks[h]!;
    return -1;
  }

  isSpecial(id: number): boolean {
    return this.specialIds.includes(id);
  }

  /** The raw bytes of one token (a view). */
  tokenBytes(id: number): Uint8Array {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) throw new RangeError(`token id ${id} is outside the vocabulary`);
    return this.blob.subarray(this.offsets[id]!, this.offsets[id + 1]!);
  }

  /** Token ids of `text`: special-token strings become their ids, nothing is added. */
  encode(text: string): number[] {
    const out: number[] = [];
    let start = 0;
    for (let i = 0; i < text.length; i++) {
      if (text.charCodeAt(i) !== 0x3c /* "<" */) continue;
      const s = this.specialText.find((t) => text.startsWith(t.text, i)); // longest first
      if (!s) continue;
      this.encodeOrdinary(text.slice(start, i), out);
      out.push(s.id);
      i += s.text.length - 1;
      start = i + 1;
    }
    this.encodeOrdinary(text.slice(start), out);
    return out;
  }

  private encodeOrdinary(text: string, out: number[]): void {
    if (!text) return;
    const enc = new TextEncoder();
    for (const m of text.matchAll(PIECES)) {
      const word: number[] = [];
      for (const b of enc.encode(m[0])) {
        const id = this.byteIds[b]!;
        if (id !== NO_TOKEN) word.push(id);
        else if (word.at(-1) !== -1) word.push(-1); // unknown byte: one unk for a run of them (fuse_unk)
      }
      this.merge(word);
      for (const id of word) out.push(id === -1 ? this.unk : id);
    }
  }

  /** Applies merges in place: the lowest-ranked adjacent pair, every occurrence left to right, until none. */
  private merge(word: number[]): void {
    for (;;) {
      let best = -1;
      for (let i = 0; i + 1 < word.length; i++) {
        if (word[i] === -1 || word[i + 1] === -1) continue;
        const r = this.rank(word[i]!, word[i + 1]!);
        if (r >= 0 && (best < 0 || r < best)) best = r;
      }
      if (best < 0) return;
      const [l, r, m] = [this.merges[3 * best]!, this.merges[3 * best + 1]!, this.merges[3 * best + 2]!];
      let w = 0;
      for (let i = 0; i < word.length; i++) {
        if (i + 1 < word.length && word[i] === l && word[i + 1] === r) {
          word[w++] = m;
          i++;
        } else word[w++] = word[i]!;
      }
      word.length = w;
    }
  }
}
