/* Parts of the spec-v1 model that spec-v1 and spec-v2 decode alike (docs/kv-codec-format.md):
 * FP8-cache row exponents and their section, E4M3 values, and each value's layout from its prediction. */
#ifndef KV_SPEC_MODEL_H
#define KV_SPEC_MODEL_H
#include "bits.h"
#include "spec_grid.h"

/* Row exponents the prediction implies (codec/fp8cache.py row_exponents on amax |pred|). */
static i32 row_exponent(float amax) {
  double a = amax;
  i32 e;
  if (a > 0) {
    double q = a / 448.0;
    u64 qb;
    __builtin_memcpy(&qb, &q, 8);
    e = (i32)((qb >> 52) & 0x7FF) - 1022; /* frexp: q = f * 2^e, f in [0.5, 1); q is a normal double */
  } else {
    e = -127;
  }
  u64 pb = (u64)(1023 + e - 1) << 52;     /* 2^(e-1), e-1 in [-158, 127]: normal */
  double p2;
  __builtin_memcpy(&p2, &pb, 8);
  if (448.0 * p2 >= a) e -= 1;
  return e < -127 ? -127 : e > 127 ? 127 : e;
}

static float pow2f(i32 e) { /* e in [-127, 127] */
  return e >= -126 ? bits_f32((u32)(127 + e) << 23) : bits_f32(1u << (149 + e));
}

/* FP8 exponent section of one segment (fp8cache.read_exponents): 1 bit per row, then passes. */
static int read_exponents(bitreader *ex, const float *pred, u32 rows, u32 D, u8 *st, i8 *out) {
  u32 v;
  for (u32 r = 0; r < rows; r++) {
    float amax = 0;
    for (u32 d = 0; d < D; d++) {
      float a = pred[(u64)r * D + d];
      if ((f32_bits(a) & 0x7F800000u) == 0x7F800000u) a = 0;
      a = a < 0 ? -a : a;
      if (a > amax) amax = a;
    }
    out[r] = (i8)row_exponent(amax);
  }
  /* passes over the rows still open: 0 = as predicted; then 0 = +1; then 0 = -1; then 8 raw bits */
  enum { SAME, OPEN1, PLUS, OPEN2, MINUS, RAW };
  for (u32 r = 0; r < rows; r++) { if (!br_read(ex, 1, &v)) return ST_CORRUPT; st[r] = v ? OPEN1 : SAME; }
  for (u32 r = 0; r < rows; r++) if (st[r] == OPEN1) { if (!br_read(ex, 1, &v)) return ST_CORRUPT; st[r] = v ? OPEN2 : PLUS; }
  for (u32 r = 0; r < rows; r++) if (st[r] == OPEN2) { if (!br_read(ex, 1, &v)) return ST_CORRUPT; st[r] = v ? RAW : MINUS; }
  for (u32 r = 0; r < rows; r++) {
    i32 e = out[r];
    if (st[r] == PLUS) e += 1;
    else if (st[r] == MINUS) e -= 1;
    else if (st[r] == RAW) { if (!br_read(ex, 8, &v)) return ST_CORRUPT; e = v >= 128 ? (i32)v - 256 : (i32)v; }
    if (e < -127 || e > 127) return ST_CORRUPT; /* FP8 scale exponent out of range */
    out[r] = (i8)e;
  }
  return ST_OK;
}

static float e4m3_value(u8 c) {
  u32 E = (c >> 3) & 15, m = c & 7;
  float v = (E == 15 && m == 7) ? bits_f32(0x7FC00000u) : E == 0 ? (float)m * bits_f32(0x3B000000u) /* 2^-9 */
                                                                   : (float)(8 + m) * pow2f((i32)E - 10);
  return (c & 0x80) ? -v : v;
}

/* Every value's layout (bucket table, grid) from its prediction, scale and row exponent. */
static void segment_layouts(const float *pred, const i8 *Sc, const i8 *rowexp, u32 KH, u32 T, u32 D,
                            const float_format *f, int phase, value_layout *lay) {
  for (u32 h = 0, i = 0; h < KH; h++)
    for (u32 t = 0; t < T; t++) {
      i32 e = rowexp ? rowexp[h * T + t] : 0;
      float scale = pow2f(-e);
      for (u32 d = 0; d < D; d++, i++) {
        float p = rowexp ? pred[i] * scale : pred[i];
        lay[i] = layout_of(sanitize(p, f), (i64)Sc[h * D + d] - SCALE_STEPS * e, f, phase);
      }
    }
}
#endif
