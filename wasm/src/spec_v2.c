/* spec-v2 decoder (docs/kv-codec-format.md "spec-v2"), beside the NumPy reference codec/spec2.py.
 * Same model as spec-v1 (spec_model.h); each block of 32*S values has its own 32 rANS states, words
 * and raw bit region, sized by the block table. Host protocol as spec-v1:
 *   spec_v2_open(data, len, fingerprint, fp_len, L, KH, D, t0, t1) -> status
 *   for layer in 0..L-1: spec_v2_layer(pred [2][KH][T][D] f32, out u16|u8, observed f32|0)
 *   spec_v2_finish() -> status   (padding, exponent section, then the values hash)
 * The bytes are hostile: every size is checked against `len` before a read. */
#include "sha256.h"
#include "spec_model.h"

#define HEAD2 66
#define LANES 32
#define RANS_L (1u << 16)

static struct {
  int status;
  u32 layer, L, KH, T, D, steps, nb;  /* nb: blocks per segment */
  int fp8, phase;
  u64 n_seg, index;                   /* values per segment; next value's hash index */
  const float_format *fmt;
  const u8 *params, *table, *states, *words, *raw;
  u32 n_words, n_raw;
  u64 *word_base, *bit_base;          /* per block: first word, first raw bit */
  bitreader exp;
  u64 hash, want_hash;
  i8 *exps;
  value_layout *lay;
  u8 *sym;
  i64 *k;
} G;

static int fail(int status) {
  if (G.status == ST_OK) G.status = status;
  return G.status;
}

static u64 mix64(u64 z) { /* splitmix64's finalizer (codec/format.py HASH_*) */
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

EXPORT(spec_v2_open)
int spec_v2_open(const u8 *data, u32 len, const u8 *fp, u32 fp_len, u32 L, u32 KH, u32 D, u32 t0, u32 t1) {
  __builtin_memset(&G, 0, sizeof G);
  G.status = ST_BAD_CALL;
  if (!arena_owns(data, len) || !arena_owns(fp, fp_len)) return ST_BAD_CALL;
  G.status = ST_OK;
  if (len < 4 || data[0] != 'R' || data[1] != 'P' || data[2] != 'S' || data[3] != 'C') return fail(ST_BAD_MAGIC);
  if (len < 6) return fail(ST_TRUNCATED);
  if (rd16(data + 4) != 2) return fail(ST_BAD_VERSION);
  if (len < HEAD2) return fail(ST_TRUNCATED);
  u32 mode = data[6], model = data[7], steps = rd16(data + 54);
  if (mode > 1 || model > 1 || data[56] != 15 || data[57] != 0 || steps < 1 || steps > 4096) return fail(ST_CORRUPT);
  u8 want[32];
  sha256(fp, fp_len, want);
  if (!digest_eq(want, data + 8)) return fail(ST_FINGERPRINT_MISMATCH);
  if (rd16(data + 40) != L || rd16(data + 42) != KH || rd16(data + 44) != D || rd32(data + 46) != t0 || rd32(data + 50) != t1)
    return fail(ST_SHAPE_MISMATCH);
  i64 T = (i64)t1 - (i64)t0;
  if (!(L > 0 && L <= 1024 && KH > 0 && KH <= 1024 && D > 0 && D <= 4096 && T >= 0 && T <= (1 << 24))) return fail(ST_CORRUPT);
  u64 n_seg = (u64)KH * (u64)T * D;
  if (n_seg > 0x0FFFFFFF) return fail(ST_OUT_OF_MEMORY);
  u64 nb = (n_seg + 32ull * steps - 1) / (32ull * steps), n_all = 2ull * L * nb;
  u64 params_len = 2ull * L * (4 + (u64)KH * D);
  if ((u64)len < HEAD2 + params_len + 12) return fail(ST_TRUNCATED);
  const u8 *sizes = data + HEAD2 + params_len;
  u32 n_words = rd32(sizes), n_raw = rd32(sizes + 4), n_exp = rd32(sizes + 8);
  u64 total = HEAD2 + params_len + 12 + n_all * (12 + 4 * LANES) + 2ull * n_words + n_raw + n_exp;
  if (len < total) return fail(ST_TRUNCATED);
  if (len > total) return fail(ST_CORRUPT);
  for (u32 s = 0; s < 2 * L; s++) {
    const u8 *p = data + HEAD2 + (u64)s * (4 + (u64)KH * D);
    if ((u32)p[0] + p[2] > 256) return fail(ST_CORRUPT);
  }
  G.fp8 = mode == 1; G.phase = model == 1; G.fmt = G.fp8 ? &FMT_E4M3 : &FMT_BF16;
  G.L = L; G.KH = KH; G.T = (u32)T; G.D = D; G.steps = steps; G.nb = (u32)nb; G.n_seg = n_seg;
  G.params = data + HEAD2;
  G.table = sizes + 12;
  G.states = G.table + 12 * n_all;
  G.words = G.states + 4 * LANES * n_all;
  G.raw = G.words + 2ull * n_words;
  G.n_words = n_words; G.n_raw = n_raw;
  br_init(&G.exp, G.raw + n_raw, n_exp);
  G.want_hash = rd32(data + 58) | (u64)rd32(data + 62) << 32;
  u32 n = (u32)n_seg;
  G.word_base = arena_alloc(8 * (u32)n_all);
  G.bit_base = arena_alloc(8 * (u32)n_all);
  G.lay = arena_alloc(n * (u32)sizeof(value_layout));
  G.sym = arena_alloc(n);
  G.k = arena_alloc(8 * n);
  G.exps = G.fp8 ? arena_alloc(2 * L * KH * (u32)T) : 0;
  if (!G.word_base || !G.bit_base || (n && (!G.lay || !G.sym || !G.k)) || (G.fp8 && L * KH * T && !G.exps))
    return fail(ST_OUT_OF_MEMORY);
  /* block table: totals must match the sizes; no block with more words than values */
  u64 w = 0, bits = 0;
  for (u64 b = 0; b < n_all; b++) {
    const u8 *e = G.table + 12 * b;
    u64 vals = b % nb == nb - 1 ? n_seg - (nb - 1) * 32ull * steps : 32ull * steps;
    G.word_base[b] = w; G.bit_base[b] = bits;
    if (rd32(e) > vals) return fail(ST_CORRUPT);
    w += rd32(e); bits += (u64)rd32(e + 4) + rd32(e + 8);
    for (u32 j = 0; j < LANES; j++)
      if (rd32(G.states + 4 * (LANES * b + j)) < RANS_L) return fail(ST_CORRUPT);
  }
  if (w != n_words || (bits + 7) / 8 != n_raw) return fail(ST_CORRUPT);
  return ST_OK;
}

/* One block: `cnt` values from `a`, lane i mod 32 at step i div 32; states end at 2^16, words exact. */
static int decode_block(const spec_tables *tab, u64 b, u32 a, u32 cnt) {
  u32 x[LANES];
  for (u32 j = 0; j < LANES; j++) x[j] = rd32(G.states + 4 * (LANES * b + j));
  u32 nw = rd32(G.table + 12 * b), wp = 0;
  const u8 *words = G.words + 2 * G.word_base[b];
  for (u32 i = 0; i < cnt; i++) {
    u32 j = i % LANES, xs = x[j], tid = G.lay[a + i].tid, slot = xs & (PROB_M - 1);
    u32 s = spec_symbol(tab, tid, slot);
    xs = tab->freq[tid][s] * (xs >> PROB_BITS) + slot - tab->cum[tid][s];
    if (xs < RANS_L) {
      if (wp >= nw) return ST_CORRUPT; /* block's words ended early */
      xs = (xs << 16) | rd16(words + 2ull * wp++);
    }
    x[j] = xs;
    G.sym[a + i] = (u8)s;
  }
  if (wp != nw) return ST_CORRUPT;
  for (u32 j = 0; j < LANES; j++) if (x[j] != RANS_L) return ST_CORRUPT;
  return ST_OK;
}

/* A block's raw region: low bits of its values, then refinement/escape fields, each exactly as sized. */
static int block_fields(u64 b, u32 a, u32 cnt, u8 *out) {
  const float_format *f = G.fmt;
  u32 n_low = rd32(G.table + 12 * b + 4), n_ref = rd32(G.table + 12 * b + 8);
  bitreader r;
  br_init(&r, G.raw, G.n_raw);
  r.pos = G.bit_base[b];
  u64 end_low = r.pos + n_low, end = end_low + n_ref;
  for (u32 i = a; i < a + cnt; i++) {
    u32 low = 0, sh = G.lay[i].shift;
    if (G.sym[i] != ESCAPE && sh && (r.pos + sh > end_low || !br_read(&r, sh, &low))) return ST_CORRUPT;
    G.k[i] = G.lay[i].c0 + ((i64)G.sym[i] - WINDOW) * (1ll << sh) + low;
  }
  if (r.pos != end_low) return ST_CORRUPT;
  for (u32 i = a; i < a + cnt; i++) {
    int esc = G.sym[i] == ESCAPE;
    u32 ref = 0, nbits = esc ? (u32)f->raw_bits : refinement_len(G.k[i], G.lay[i].G, f);
    if (r.pos + nbits > end || !br_read(&r, nbits, &ref)) return ST_CORRUPT;
    i64 bits = esc ? (i64)ref : from_grid(G.k[i], ref, G.lay[i].G, f);
    if (bits < 0) return ST_CORRUPT;
    if (G.fp8) out[i] = (u8)bits;
    else wr16(out + 2ull * i, (u32)bits);
  }
  return r.pos == end ? ST_OK : ST_CORRUPT;
}

static int decode_segment(u32 seg, const float *pred, const i8 *rowexp, u8 *out) {
  const u8 *param = G.params + (u64)seg * (4 + (u64)G.KH * G.D);
  const spec_tables *tab = spec_tables_get(param);
  segment_layouts(pred, (const i8 *)(param + 4), rowexp, G.KH, G.T, G.D, G.fmt, G.phase, G.lay);
  u32 n = (u32)G.n_seg, per = 32 * G.steps;
  for (u32 k = 0; k < G.nb; k++) {
    u64 b = (u64)seg * G.nb + k;
    u32 a = k * per, cnt = n - a < per ? n - a : per;
    int st = decode_block(tab, b, a, cnt);
    if (st == ST_OK) st = block_fields(b, a, cnt, out);
    if (st != ST_OK) return st;
  }
  return ST_OK;
}

EXPORT(spec_v2_layer)
int spec_v2_layer(const float *pred, u8 *out, float *observed) {
  if (G.status != ST_OK) return G.status;
  u32 n = (u32)G.n_seg, width = G.fp8 ? 1 : 2;
  if (G.layer >= G.L || !arena_owns(pred, 8 * n) || !arena_owns(out, 2 * n * width) || (observed && !arena_owns(observed, 8 * n)))
    return fail(ST_BAD_CALL);
  for (u32 kind = 0; kind < 2; kind++) {
    u32 seg = 2 * G.layer + kind;
    i8 *rowexp = G.fp8 ? G.exps + (u64)seg * G.KH * G.T : 0;
    const float *p = pred + (u64)kind * n;
    u8 *o = out + (u64)kind * n * width;
    int st = rowexp ? read_exponents(&G.exp, p, G.KH * G.T, G.D, G.sym, rowexp) : ST_OK;
    if (st == ST_OK) st = decode_segment(seg, p, rowexp, o);
    if (st != ST_OK) return fail(st);
    for (u32 i = 0; i < n; i++) {
      u32 v = G.fp8 ? o[i] : rd16(o + 2 * i);
      G.hash += mix64((G.index++ << 16) | v);
      if (observed) observed[kind * n + i] = G.fp8 ? e4m3_value(o[i]) * pow2f(rowexp[i / G.D]) : bits_f32(v << 16);
    }
  }
  G.layer++;
  return ST_OK;
}

EXPORT(spec_v2_finish)
int spec_v2_finish(void) {
  if (G.status != ST_OK) return G.status;
  if (G.layer != G.L) return fail(ST_BAD_CALL);
  u64 used = 0;
  for (u64 b = 0; b < 2ull * G.L * G.nb; b++) used += (u64)rd32(G.table + 12 * b + 4) + rd32(G.table + 12 * b + 8);
  bitreader pad;
  br_init(&pad, G.raw, G.n_raw);
  pad.pos = used;
  if (!br_finished(&pad) || !br_finished(&G.exp)) return fail(ST_CORRUPT);
  if (G.fp8)
    for (u64 r = 0; r < 2ull * G.L * G.KH * G.T; r++) G.hash += mix64((G.index++ << 16) | (u8)G.exps[r]);
  if (G.hash != G.want_hash) return fail(ST_VALUE_CHECKSUM);
  return ST_OK;
}

/* FP8 mode: the decoded row exponents [L][2][KH][T] (valid after a successful finish). */
EXPORT(spec_v2_exps) u32 spec_v2_exps(void) { return (u32)(uintptr_t)G.exps; }
