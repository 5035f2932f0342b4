/* spec-v1 frequency tables (docs/kv-codec-format.md "Probability model"; Python: codec/tables.py).
 * Integer-only after the Q30 Gaussian CDF table, so they equal the reference's bit for bit. */
#ifndef KV_SPEC_TABLES_H
#define KV_SPEC_TABLES_H
#include "common.h"

#define PROB_BITS 15
#define PROB_M (1u << PROB_BITS)
#define WINDOW 40
#define N_SYMBOLS (2 * WINDOW + 2)  /* offsets -40..40, then ESCAPE */
#define ESCAPE (2 * WINDOW + 1)
#define GRID_FRAC_BITS 3
#define CLASS_MIN (-12)
#define CLASS_WIDE 12
#define SCALE_STEPS 4
#define MAX_REL_SCALE 80
#define N_NARROW (CLASS_WIDE - CLASS_MIN)
#define N_TABLES (N_NARROW * (1 << GRID_FRAC_BITS) + SCALE_STEPS)
#define LUT_SHIFT 7                 /* slot >> 7: 256 buckets per table for the symbol search */

/* One segment mixture's tables: freq and cumulative starts per (table, symbol), plus a bucket index
 * giving the symbol that holds the first slot of each bucket. */
typedef struct {
  u8 key[4]; /* a_w, k_w, a_f, a_e as stored */
  int valid;
  u16 freq[N_TABLES][N_SYMBOLS];
  u16 cum[N_TABLES][N_SYMBOLS + 1];
  u8 lut[N_TABLES][PROB_M >> LUT_SHIFT];
} spec_tables;

/* Tables for a mixture, from a small cache. */
const spec_tables *spec_tables_get(const u8 mix[4]);

/* Symbol whose [cum, cum + freq) holds slot. */
static inline u32 spec_symbol(const spec_tables *t, u32 tid, u32 slot) {
  u32 s = t->lut[tid][slot >> LUT_SHIFT];
  while (t->cum[tid][s + 1] <= slot) s++;
  return s;
}
#endif
