/* Shared types and the module's memory for the KV codec in wasm32 (no libc, no imports).
 *
 * Memory: one bump arena on top of the module's linear memory. The host resets it before each
 * call sequence, allocates the buffers it fills or reads (alloc), and the arena grows the memory
 * with memory.grow as needed; nothing is ever freed one by one, so there is no allocator state that
 * hostile input could corrupt. Every pointer a decoder reads through was bounds-checked against
 * the length the host passed. */
#ifndef KV_COMMON_H
#define KV_COMMON_H

#include <stddef.h>
#include <stdint.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
typedef int8_t i8;
typedef int16_t i16;
typedef int32_t i32;
typedef int64_t i64;

#define EXPORT(name) __attribute__((export_name(#name)))

/* spec-v1 statuses (gpu-backend/reprise_gpu/codec/format.py Status); the edge codec uses the same. */
enum {
  ST_OK = 0,
  ST_TRUNCATED = 1,
  ST_BAD_MAGIC = 2,
  ST_BAD_VERSION = 3,
  ST_FINGERPRINT_MISMATCH = 4,
  ST_SHAPE_MISMATCH = 5,
  ST_PAYLOAD_CHECKSUM = 6,
  ST_CORRUPT = 7,
  ST_VALUE_CHECKSUM = 8,
  ST_OUT_OF_MEMORY = 9, /* the arena could not grow: not a verdict on the bytes */
  ST_BAD_CALL = 10      /* the host called out of order or with buffers outside the arena */
};

/* Arena allocation, 16-byte aligned; 0 when memory cannot grow. */
void *arena_alloc(u32 bytes);
/* 1 when [p, p + n) lies inside memory the arena handed out. */
int arena_owns(const void *p, u32 n);

static inline u16 rd16(const u8 *p) { return (u16)(p[0] | (p[1] << 8)); }
static inline u32 rd32(const u8 *p) { return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24); }
static inline void wr16(u8 *p, u32 v) { p[0] = (u8)v; p[1] = (u8)(v >> 8); }
static inline void wr32(u8 *p, u32 v) { p[0] = (u8)v; p[1] = (u8)(v >> 8); p[2] = (u8)(v >> 16); p[3] = (u8)(v >> 24); }

static inline u32 f32_bits(float f) { u32 u; __builtin_memcpy(&u, &f, 4); return u; }
static inline float bits_f32(u32 u) { float f; __builtin_memcpy(&f, &u, 4); return f; }

/* Bit length of x (0 for 0). */
static inline int bitlen64(u64 x) { return x ? 64 - __builtin_clzll(x) : 0; }

#endif
