/* spec-v1 decoder (docs/kv-codec-format.md), a second implementation beside the Python reference
 * (gpu-backend/reprise_gpu/codec/spec.py), held to it bit for bit by wasm/tests on vectors/kv-codec/.
 *
 * Host protocol, one chunk at a time (the predictor may use the exact K/V of earlier layers):
 *   spec_v1_open(data, len, fingerprint, fp_len, L, KH, D, t0, t1) -> status
 *   for layer in 0..L-1: spec_v1_layer(pred [2][KH][T][D] f32, out [2][KH][T][D] u16|u8, observed f32|0)
 *   spec_v1_finish() -> status        (streams consumed exactly, then the values SHA-256)
 * Every buffer lives in the arena; the bytes are hostile: each check returns a status, in the order
 * of the format's "Decoding and statuses" section, and nothing reads past `len`. */
#include "bits.h"
#include "sha256.h"
#include "spec_model.h"

#define HEAD 94
#define TRAILER 32
#define RANS_L (1u << 16)

static struct {
  int status;           /* first failure, or OK while decoding */
  u32 layer;            /* next layer to decode */
  int fp8, phase;
  u32 L, KH, T, D, lanes;
  u64 n_seg;            /* values per segment: KH * T * D */
  const float_format *fmt;
  const u8 *params;     /* 2L x (4 + KH*D) */
  const u8 *words;
  u32 n_words, word_ptr;
  u32 *x;               /* rANS states */
  bitreader raw, exp;
  const u8 *values_sha;
  sha256_ctx values;
  i8 *exps;             /* FP8: [L][2][KH][T] */
  value_layout *lay;    /* per-segment scratch */
  u8 *sym;
  i64 *k;
} S;

static int fail(int status) {
  if (S.status == ST_OK) S.status = status;
  return S.status;
}

EXPORT(spec_v1_open)
int spec_v1_open(const u8 *data, u32 len, const u8 *fp, u32 fp_len, u32 L, u32 KH, u32 D, u32 t0, u32 t1) {
  __builtin_memset(&S, 0, sizeof S);
  S.status = ST_BAD_CALL;
  if (!arena_owns(data, len) || !arena_owns(fp, fp_len)) return ST_BAD_CALL;
  S.status = ST_OK;
  if (len < 4 || data[0] != 'R' || data[1] != 'P' || data[2] != 'S' || data[3] != 'C') return fail(ST_BAD_MAGIC);
  if (len < 6) return fail(ST_TRUNCATED);
  if (rd16(data + 4) != 1) return fail(ST_BAD_VERSION);
  if (len < HEAD + TRAILER) return fail(ST_TRUNCATED);
  u32 mode = data[6], model = data[7];
  if (mode > 1 || model > 1 || data[58] != 15) return fail(ST_CORRUPT);
  u8 want[32];
  sha256(fp, fp_len, want);
  if (!digest_eq(want, data + 8)) return fail(ST_FINGERPRINT_MISMATCH);
  u32 hL = rd16(data + 40), hKH = rd16(data + 42), hD = rd16(data + 44), ht0 = rd32(data + 46), ht1 = rd32(data + 50);
  if (hL != L || hKH != KH || hD != D || ht0 != t0 || ht1 != t1) return fail(ST_SHAPE_MISMATCH);
  i64 T = (i64)t1 - (i64)t0;
  u32 lanes = rd32(data + 54);
  if (!(L > 0 && L <= 1024 && KH > 0 && KH <= 1024 && D > 0 && D <= 4096 && T >= 0 && T <= (1 << 24) && lanes > 0 && lanes <= (1u << 20)))
    return fail(ST_CORRUPT);
  u64 params_len = 2ull * L * (4 + (u64)KH * D);
  if ((u64)len < HEAD + params_len + 12 + TRAILER) return fail(ST_TRUNCATED);
  const u8 *sizes = data + HEAD + params_len;
  u32 n_words = rd32(sizes), n_raw = rd32(sizes + 4), n_exp = rd32(sizes + 8);
  u64 total = HEAD + params_len + 12 + 4ull * lanes + 2ull * n_words + n_raw + n_exp + TRAILER;
  if (len < total) return fail(ST_TRUNCATED);
  if (len > total) return fail(ST_CORRUPT);
  u8 got[32];
  sha256(data, len - TRAILER, got);
  if (!digest_eq(got, data + len - TRAILER)) return fail(ST_PAYLOAD_CHECKSUM);
  for (u32 s = 0; s < 2 * L; s++) {
    const u8 *p = data + HEAD + (u64)s * (4 + (u64)KH * D);
    if ((u32)p[0] + p[2] > 256) return fail(ST_CORRUPT); /* mixture weights over 1 */
  }
  S.fp8 = mode == 1;
  S.phase = model == 1;
  S.fmt = S.fp8 ? &FMT_E4M3 : &FMT_BF16;
  S.L = L; S.KH = KH; S.T = (u32)T; S.D = D; S.lanes = lanes;
  S.n_seg = (u64)KH * (u64)T * D;
  S.params = data + HEAD;
  const u8 *states = sizes + 12;
  S.words = states + 4ull * lanes;
  S.n_words = n_words;
  br_init(&S.raw, S.words + 2ull * n_words, n_raw);
  br_init(&S.exp, S.words + 2ull * n_words + n_raw, n_exp);
  S.values_sha = data + 62;
  if (S.n_seg > 0x0FFFFFFF) return fail(ST_OUT_OF_MEMORY);
  u32 n = (u32)S.n_seg;
  S.x = arena_alloc(4 * lanes);
  S.lay = arena_alloc(n * (u32)sizeof(value_layout));
  S.sym = arena_alloc(n);
  S.k = arena_alloc(8 * n);
  S.exps = S.fp8 ? arena_alloc(2 * L * KH * (u32)T) : 0;
  if (!S.x || (n && (!S.lay || !S.sym || !S.k)) || (S.fp8 && L * KH * T && !S.exps)) return fail(ST_OUT_OF_MEMORY);
  for (u32 j = 0; j < lanes; j++) {
    S.x[j] = rd32(states + 4 * j);
    if (S.x[j] < RANS_L) return fail(ST_CORRUPT); /* rANS initial state out of range */
  }
  sha256_init(&S.values);
  return ST_OK;
}

static int decode_segment(const float *pred, const u8 *param, const i8 *rowexp, u8 *out) {
  const float_format *f = S.fmt;
  const spec_tables *tab = spec_tables_get(param);
  const i8 *Sc = (const i8 *)(param + 4);
  u32 KH = S.KH, T = S.T, D = S.D, n = (u32)S.n_seg;
  segment_layouts(pred, Sc, rowexp, KH, T, D, f, S.phase, S.lay);
  /* rANS: steps of up to `lanes` values, value j of a step on lane j; the segment starts a step */
  for (u32 a = 0; a < n; a += S.lanes) {
    u32 cnt = n - a < S.lanes ? n - a : S.lanes;
    for (u32 j = 0; j < cnt; j++) {
      u32 x = S.x[j], tid = S.lay[a + j].tid, slot = x & (PROB_M - 1);
      u32 s = spec_symbol(tab, tid, slot);
      x = tab->freq[tid][s] * (x >> PROB_BITS) + slot - tab->cum[tid][s];
      if (x < RANS_L) {
        if (S.word_ptr >= S.n_words) return ST_CORRUPT; /* rANS stream ended early */
        x = (x << 16) | rd16(S.words + 2ull * S.word_ptr++);
      }
      S.x[j] = x;
      S.sym[a + j] = (u8)s;
    }
  }
  /* raw stream: every wide bucket's low bits, then every refinement-or-escape field */
  for (u32 i = 0; i < n; i++) {
    u32 low = 0;
    if (S.sym[i] != ESCAPE && S.lay[i].shift && !br_read(&S.raw, S.lay[i].shift, &low)) return ST_CORRUPT;
    S.k[i] = S.lay[i].c0 + ((i64)S.sym[i] - WINDOW) * (1ll << S.lay[i].shift) + low;
  }
  for (u32 i = 0; i < n; i++) {
    int esc = S.sym[i] == ESCAPE;
    u32 ref = 0, nb = esc ? (u32)f->raw_bits : refinement_len(S.k[i], S.lay[i].G, f);
    if (!br_read(&S.raw, nb, &ref)) return ST_CORRUPT;
    i64 bits = esc ? (i64)ref : from_grid(S.k[i], ref, S.lay[i].G, f);
    if (bits < 0) return ST_CORRUPT; /* a grid position no encoder emits */
    if (S.fp8) out[i] = (u8)bits;
    else wr16(out + 2ull * i, (u32)bits);
  }
  return ST_OK;
}

EXPORT(spec_v1_layer)
int spec_v1_layer(const float *pred, u8 *out, float *observed) {
  if (S.status != ST_OK) return S.status;
  u32 n = (u32)S.n_seg, width = S.fp8 ? 1 : 2;
  if (S.layer >= S.L || !arena_owns(pred, 8 * n) || !arena_owns(out, 2 * n * width) || (observed && !arena_owns(observed, 8 * n)))
    return fail(ST_BAD_CALL);
  for (u32 kind = 0; kind < 2; kind++) {
    const u8 *param = S.params + (u64)(2 * S.layer + kind) * (4 + (u64)S.KH * S.D);
    i8 *rowexp = S.fp8 ? S.exps + (u64)(2 * S.layer + kind) * S.KH * S.T : 0;
    const float *p = pred + (u64)kind * n;
    int st = rowexp ? read_exponents(&S.exp, p, S.KH * S.T, S.D, S.sym, rowexp) : ST_OK;
    if (st == ST_OK) st = decode_segment(p, param, rowexp, out + (u64)kind * n * width);
    if (st != ST_OK) return fail(st);
    if (observed)
      for (u32 i = 0; i < n; i++) {
        u8 *o = out + (u64)kind * n * width;
        observed[kind * n + i] = S.fp8 ? e4m3_value(o[i]) * pow2f(rowexp[i / S.D]) : bits_f32((u32)rd16(o + 2 * i) << 16);
      }
  }
  sha256_update(&S.values, out, 2 * n * width);
  S.layer++;
  return ST_OK;
}

EXPORT(spec_v1_finish)
int spec_v1_finish(void) {
  if (S.status != ST_OK) return S.status;
  if (S.layer != S.L) return fail(ST_BAD_CALL);
  if (S.word_ptr != S.n_words) return fail(ST_CORRUPT);
  for (u32 j = 0; j < S.lanes; j++)
    if (S.x[j] != RANS_L) return fail(ST_CORRUPT); /* did not end in the initial state */
  if (!br_finished(&S.raw) || !br_finished(&S.exp)) return fail(ST_CORRUPT);
  if (S.fp8) sha256_update(&S.values, (const u8 *)S.exps, 2 * S.L * S.KH * S.T);
  u8 got[32];
  sha256_final(&S.values, got);
  if (!digest_eq(got, S.values_sha)) return fail(ST_VALUE_CHECKSUM);
  return ST_OK;
}

/* FP8 mode: the decoded row exponents [L][2][KH][T] (valid after a successful finish). */
EXPORT(spec_v1_exps) u32 spec_v1_exps(void) { return (u32)(uintptr_t)S.exps; }
