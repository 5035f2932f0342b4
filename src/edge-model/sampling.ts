/**
 * Next-token choice and stop sequences for the edge model.
 *
 * - temperature 0 (or below): greedy argmax, lowest id on ties.
 * - otherwise softmax(logits / temperature), cut to the nucleus (smallest set of most likely tokens
 *   whose mass reaches top_p; ties broken by id), one uniform draw from a seeded xoshiro128**.
 *   The same seed, logits and options always give the same token.
 * - stop sequences are matched on text: text that could still become a stop sequence is held back,
 *   and a match cuts the text right before it.
 */

/** Uniform floats in [0, 1) from xoshiro128** (Blackman & Vigna), seeded through splitmix32. */
export type Rng = () => number;

/**
 * A reproducible random source for any integer seed (negative and > 2^32 included).
 *
 * @example
 * ```ts
 * const a = seededRng(42), b = seededRng(42);
 * a() === b(); // true
 * ```
 */
export function seededRng(seed: number): Rng {
  const s64 = BigInt.asUintN(64, BigInt(Math.trunc(seed)));
  let x = Number(s64 & 0xffffffffn) ^ Math.imul(Number(s64 >> 32n), 0x9e3779b9);
  const splitmix32 = () => {
    x = (x + 0x9e3779b9) | 0;
    let z = x;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
  let a = splitmix32(), b = splitmix32(), c = splitmix32(), d = splitmix32();
  return () => {
    const r = Math.imul(rotl(Math.imul(b, 5), 7), 9) >>> 0;
    const t = b << 9;
    c ^= a;
    d ^= b;
    b ^= c;
    a ^= d;
    c ^= t;
    d = rotl(d, 11);
    return r / 4294967296; // 2^32
  };
}

function rotl(v: number, k: number): number {
  return (v << k) | (v >>> (32 - k));
}

/** A seed for requests that did not give one. */
export function randomSeed(): number {
  return crypto.getRandomValues(new Uint32Array(1))[0]!;
}

/** Index of the largest logit; the lowest index wins a tie. */
export function argmax(logits: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
  return best;
}

export interface SampleOptions {
  temperature: number;
  topP: number;
}

/**
 * One token from `logits` under temperature and top-p, using one draw of `rng` (none when greedy).
 *
 * @example
 * ```ts
 * sampleToken(logits, { temperature: 0, topP: 1 }, rng);     // argmax
 * sampleToken(logits, { temperature: 0.7, topP: 0.9 }, rng); // nucleus sample
 * ```
 */
export function sampleToken(logits: Float32Array, opts: SampleOptions, rng: Rng): number {
  if (!(opts.temperature > 0) || logits.length === 1) return argmax(logits);
  const n = logits.length;
  const max = logits[argmax(logits)]!;
  const p = new Float64Array(n);
  let total = 0;
  for (let i = 0; i < n; i++) total += p[i] = Math.exp((logits[i]! - max) / opts.temperature);
  const topP = Math.min(Math.max(opts.topP, 0), 1);
  if (topP >= 1) return draw(p, null, n, total, rng);
  const order = Array.from({ length: n }, (_, i) => i).sort((i, j) => p[j]! - p[i]! || i - j);
  const target = topP * total;
  let kept = 0, mass = 0;
  while (kept < n && (kept === 0 || mass < target)) mass += p[order[kept++]!]!;
  return draw(p, order, kept, mass, rng);
}

function draw(p: Float64Array, order: number[] | null, count: number, mass: number, rng: Rng): number {
  let u = rng() * mass;
  for (let k = 0; k < count; k++) {
    const i = order ? order[k]! : k;
    u -= p[i]!;
    if (u < 0) return i;
  }
  // Rounding left u a hair above zero: the last kept token with any mass.
  for (let k = count - 1; k >= 0; k--) {
    const i = order ? order[k]! : k;
    if (p[i]! > 0) return i;
  }
  return order ? order[0]! : 0;
}

/**
 * Finds stop sequences in streamed text.
 *
 * @example
 * ```ts
 * const m = new StopMatcher(["\n\n"]);
 * m.push("Hello\n"); // { text: "Hello", stopped: false }  ("\n" is held back)
 * m.push("\nBye");   // { text: "", stopped: true }
 * ```
 */
export class StopMatcher {
  private readonly stops: string[];
  private pending = "";

  constructor(stops: readonly string[]) {
    this.stops = stops.filter((s) => s.length > 0);
  }

  /** Adds text; returns what can be emitted now and whether a stop sequence matched. */
  push(text: string): { text: string; stopped: boolean } {
    this.pending += text;
    let cut = -1;
    for (const s of this.stops) {
      const at = this.pending.indexOf(s);
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      const out = this.pending.slice(0, cut);
      this.pending = "";
      return { text: out, stopped: true };
    }
    const hold = this.heldSuffix();
    const out = this.pending.slice(0, this.pending.length - hold);
    this.pending = this.pending.slice(this.pending.length - hold);
    return { text: out, stopped: false };
  }

  /** The held-back text, at the end of the generation. */
  flush(): string {
    const out = this.pending;
    this.pending = "";
    return out;
  }

  /** Length of the longest suffix of pending text that is a proper prefix of some stop sequence. */
  private heldSuffix(): number {
    let best = 0;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, this.pending.length); k > best; k--) {
        if (this.pending.endsWith(s.slice(0, k))) {
          best = k;
          break;
        }
      }
    }
    return best;
  }
}
