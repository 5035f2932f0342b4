/* Exact maps between target bit patterns (BF16 or e4m3) and positions on a prediction's grid, and
 * the per-value layout of the probability model (Python: codec/grid.py and codec/model.py; the
 * rules are in docs/kv-codec-format.md "Probability model"). Integer arithmetic only. */
#ifndef KV_SPEC_GRID_H
#define KV_SPEC_GRID_H
#include "spec_tables.h"

typedef struct {
  int mb;        /* explicit mantissa bits */
  int exp_max;   /* largest exponent field of a finite value */
  int bias;
  int raw_bits;  /* width of an escaped value */
  int nan_mant;  /* e4m3: exponent 15 with mantissa 7 is NaN; -1 for BF16 */
  int B;         /* bias + mantissa bits */
  u32 max_finite_bits; /* float32 bits of the largest finite value */
} float_format;

static const float_format FMT_BF16 = {7, 254, 127, 16, -1, 134, 0x7F7F0000u};  /* 255 * 2^120 */
static const float_format FMT_E4M3 = {3, 15, 7, 8, 7, 10, 0x43E00000u};        /* 448 */

/* NaN/inf -> 0, clamp to the largest finite value, -0 -> +0. */
static inline float sanitize(float p, const float_format *f) {
  if ((f32_bits(p) & 0x7F800000u) == 0x7F800000u) return 0.0f;
  float m = bits_f32(f->max_finite_bits);
  if (p > m) p = m;
  if (p < -m) p = -m;
  return p + 0.0f;
}

static inline i64 clampi(i64 v, i64 lo, i64 hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Per-value layout: grid exponent G, centre cell c0, table id and wide-bucket shift. */
typedef struct {
  u8 G, tid, shift;
  i32 c0;
} value_layout;

static inline value_layout layout_of(float p, i64 S_v, const float_format *f, int phase) {
  u32 b = f32_bits(p);
  i64 e32 = (b >> 23) & 0xFF;
  i64 e1 = e32 > 0 ? e32 : 1;
  i64 G = clampi(e1 - 127 + f->bias, 1, f->exp_max);
  i64 floor = f->B + ((S_v - MAX_REL_SCALE + SCALE_STEPS - 1) >> 2);
  if (floor > G) G = floor;
  G = clampi(G, 1, f->exp_max);
  i64 mant = (b & 0x7FFFFF) | (e32 > 0 ? 1 << 23 : 0);
  i64 sh = clampi(150 - f->B + G - GRID_FRAC_BITS - e1, 0, 63);
  i64 P = mant >> sh;
  if (b >> 31) P = -P;
  i64 C = clampi(S_v - SCALE_STEPS * (G - f->B), CLASS_MIN, MAX_REL_SCALE + SCALE_STEPS - 1);
  value_layout v;
  v.G = (u8)G;
  if (C >= CLASS_WIDE) {
    v.c0 = (i32)((P + 4) >> GRID_FRAC_BITS);
    v.tid = (u8)(N_NARROW * 8 + ((C - CLASS_WIDE) & 3));
    v.shift = (u8)(((C - CLASS_WIDE) >> 2) + 1);
  } else {
    i64 ph = phase ? (P & 7) : 0;
    v.c0 = (i32)(phase ? P >> GRID_FRAC_BITS : (P + 4) >> GRID_FRAC_BITS);
    v.tid = (u8)((C - CLASS_MIN) * 8 + ph);
    v.shift = 0;
  }
  return v;
}

/* Refinement bits after k: min(MB + 1 - bitlen|k|, G - 1) when 0 < |k| < 2^MB, else 0. */
static inline u32 refinement_len(i64 k, int G, const float_format *f) {
  u64 K = (u64)(k < 0 ? -k : k);
  if (K == 0 || K >= (1ull << f->mb)) return 0;
  i64 j = f->mb + 1 - bitlen64(K);
  return (u32)(j < G - 1 ? j : G - 1);
}

/* (k, refinement bits, G) -> target bits; -1 for a grid position no encoder emits. */
static inline i64 from_grid(i64 k, u32 ref, int G, const float_format *f) {
  u64 K = (u64)(k < 0 ? -k : k);
  if (K == 0) return -1;
  int mb = f->mb;
  i64 Ep, m;
  if (K >= (1ull << mb)) {
    int s = bitlen64(K) - mb - 1;
    if (K & ((1ull << s) - 1)) return -1;
    Ep = G + s;
    m = (i64)(K >> s);
  } else {
    u32 j = refinement_len(k, G, f);
    Ep = G - (i64)j;
    m = (i64)((K << j) | ref);
  }
  if (Ep > f->exp_max || Ep < 1) return -1;
  i64 Efield = (Ep == 1 && m < (1 << mb)) ? 0 : Ep;
  if (f->nan_mant >= 0 && Efield == f->exp_max && (m & ((1 << mb) - 1)) == f->nan_mant) return -1;
  i64 bits = (Efield << mb) | (m & ((1 << mb) - 1));
  if (k < 0) bits |= 1ll << (f->raw_bits - 1);
  return bits;
}
#endif
