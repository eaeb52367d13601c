/* What every part of the kernels shares: which x86 path a build compiles, the one numbering of
 * the weight formats (Python's is lmgen/model/kernels_abi.py's FORMAT_CODES, which a test and the
 * check at load compare with it), the block formats' constants and packed sizes, fp16 → fp32,
 * the activations rounded for block products (QuantizedX), and each thread's reusable memory.
 */
#pragma once
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __F16C__
#include <immintrin.h>
#endif

/* The x86 path of the block products a build compiles, by its -m flags (the levels of
 * lmgen/model/build_table.py): AVX-512 VNNI (with BW: the avx512 level), else AVX2 with FMA and
 * F16C (avx2), else portable C. Their code is in x86/, the portable C beside it in each header. */
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define PACKED_VNNI 1
#elif defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#define PACKED_AVX2 1
#endif

/* The weight formats, as gemv's dtype and Weights.format give them: float rows (dot.h),
 * llama.cpp's 8- and 4-bit blocks (quant.h), its 5- and 6-bit ones and K-quants (kquant.h: W_Q5_0
 * on). The one list of them: Python's FORMAT_CODES is checked against it. */
enum {
  W_F32 = 0, W_BF16 = 1,
  W_Q8_0 = 3, W_Q4_0 = 4, W_Q4_1 = 5,
  W_Q5_0 = 6, W_Q5_1 = 7, W_Q4_K = 8, W_Q5_K = 9, W_Q6_K = 10,
};
enum { QBLOCK = 32, QGROUP = 16, QMAX = 32639 /* 127 · 256 + 127: hi and lo fit in int8 */ };
enum { OUT_COLS = 16 };  /* a tile's output: out[i][b] for weight row i and row b of x, b < 16 */

static inline int64_t quant_bytes(int dtype) { return dtype == W_Q8_0 ? 512 : 256; }  /* a group's quants per block */
static inline int64_t group_block_bytes(int dtype) { return QGROUP * (dtype == W_Q8_0 ? 34 : dtype == W_Q4_0 ? 18 : 20); }
static inline int32_t quant_offset(int dtype) { return dtype == W_Q8_0 ? 128 : dtype == W_Q4_0 ? 8 : 0; }

/* A format's packed group: `subs` blocks of 32 (1, or a K-quant's 8) of `sub_bytes` each (256
 * bytes of nibbles, then `extra` bytes of high bits), then `tail` bytes of scales. */
typedef struct { int subs; int64_t sub_bytes, extra, tail, group_bytes; } KLayout;

static inline KLayout klayout(int dtype) {
  int subs = dtype >= W_Q4_K ? 8 : 1;
  int64_t extra = dtype == W_Q6_K ? 128 : dtype == W_Q4_K ? 0 : 64;
  int64_t tail = dtype == W_Q5_0 ? 32 : dtype == W_Q5_1 ? 64 : dtype == W_Q6_K ? 288 : 320;
  KLayout l = {subs, 256 + extra, extra, tail, subs * (256 + extra) + tail};
  return l;
}

/* Bytes of a packed group per block of 32 values (a K-quant's group holds 8 blocks). */
static inline int64_t kgroup_block_bytes(int dtype) { KLayout l = klayout(dtype); return l.group_bytes / l.subs; }

/* Bytes of a packed group (16 rows) per block of 32 values, in any block format. */
static inline int64_t packed_block_bytes(int dtype) {
  return dtype >= W_Q5_0 ? kgroup_block_bytes(dtype) : group_block_bytes(dtype);
}

static inline float half_to_float(const uint8_t* p) {
  uint16_t h = (uint16_t)(p[0] | (p[1] << 8));
#ifdef __F16C__
  return _cvtsh_ss(h);
#endif
  uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
  if (exp == 0x1f) u = sign | 0x7f800000u | (man << 13);  /* inf, nan */
  else if (exp) u = sign | ((exp + 112) << 23) | (man << 13);
  else if (!man) u = sign;
  else {  /* subnormal: normalise */
    int e = -1;
    do { man <<= 1; e++; } while (!(man & 0x400));
    u = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
  }
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* Rows of x rounded per block of 32: the 16-bit values q, and as bytes its 32 lo then 32 hi
 * (q = 256 hi + lo), its scale xs (x ≈ xs · q), its integer sum Σq and that of its first 16, and
 * xs · Σq (the minimums' factor: one multiplication per block, not one per block and weight row). */
typedef struct { int16_t* q; int8_t* bytes; float* scale; int32_t* total; int32_t* half; float* weighted; int64_t blocks; } QuantizedX;

/* Memory a thread reuses from call to call (kept at the largest size asked, never shrunk): a
 * batch's activations and scratch run to megabytes, which malloc would map afresh and the kernel
 * zero page by page on every step (16% of a 16-row decode step went to clearing pages). One
 * QuantizedX, one scratch area and one widened KV head (ARENA_KV) are live at a time on a thread. */
enum { ARENA_X = 0, ARENA_SCRATCH = 1, ARENA_KV = 2 };
static void* arena(int which, size_t bytes) {
  static __thread void* memory[3];
  static __thread size_t size[3];
  if (bytes > size[which]) {
    free(memory[which]);
    memory[which] = malloc(bytes);
    size[which] = memory[which] ? bytes : 0;
  }
  return memory[which];
}
