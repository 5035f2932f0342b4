/* The bump arena of common.h. The heap starts at __heap_base (after data and stack, wasm-ld). */
#include "common.h"

extern unsigned char __heap_base;

static u32 top;   /* next free byte */
static u32 base;  /* first arena byte */

EXPORT(arena_reset) void arena_reset(void) {
  base = ((u32)(uintptr_t)&__heap_base + 15u) & ~15u;
  top = base;
}

void *arena_alloc(u32 bytes) {
  if (!base) arena_reset();
  u64 end = (u64)top + (((u64)bytes + 15u) & ~(u64)15u);
  if (end > 0xFFFF0000ull) return 0;
  u64 have = (u64)__builtin_wasm_memory_size(0) << 16;
  if (end > have) {
    u64 pages = (end - have + 0xFFFFu) >> 16;
    if (__builtin_wasm_memory_grow(0, (unsigned long)pages) == (unsigned long)-1) return 0;
  }
  void *p = (void *)(uintptr_t)top;
  top = (u32)end;
  return p;
}

EXPORT(arena_alloc) u32 arena_alloc_export(u32 bytes) { return (u32)(uintptr_t)arena_alloc(bytes); }

int arena_owns(const void *p, u32 n) {
  u32 a = (u32)(uintptr_t)p;
  return base && a >= base && (u64)a + n <= top;
}

EXPORT(arena_used) u32 arena_used(void) { return top - base; }
