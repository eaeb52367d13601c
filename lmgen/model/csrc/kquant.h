/* Products of weights in llama.cpp's 5- and 6-bit block formats and its K-quants — Q5_0, Q5_1,
 * Q4_K, Q5_K, Q6_K — with rows of x. Included by project.h, after the 4- and 8-bit products
 * (quant.h), whose activations (QuantizedX: x rounded to int16 per block of 32) and arithmetic
 * they share; the VNNI and AVX2 tiles are in x86/kquant.h, the portable C here.
 *
 * lmgen.model.kquant packs them as the other formats are: groups of 16 rows, and per block of
 * 32 values (a K-quant's sub-block) the 16 rows' low four bits interleaved four bytes at a time,
 * byte t of chunk c holding value 4c+t in its low nibble and 16+4c+t in its high one. The fifth
 * bit (Q5) comes as one 32-bit word per row whose byte t holds, for c = 0..3, value 4c+t's in bit
 * 2c and value 16+4c+t's in bit 2c+1; Q6_K's two high bits as two such words, bits 2c..2c+1 of
 * byte t for value 4c+t (first word) and 16+4c+t (second): a shift by 2c and a mask put them in
 * place for all 64 bytes of a chunk at once. The scales follow the blocks (see kquant.py; each
 * group's sizes: common.h's klayout):
 *
 *   Q5_0  per block: d (fp16) ×16                   w = d (q - 16)
 *   Q5_1  per block: d, m ×16                       w = d q + m
 *   Q4_K, Q5_K  per 8 blocks: sc[8][16], mn[8][16] (6-bit integers), d, dmin ×16
 *                                                   w = d sc q - dmin mn
 *   Q6_K  per 8 blocks: sc[16][16] (int8, one per 16 values), d ×16    w = d sc (q - 32)
 *
 * Each block's (each half block's, for Q6_K) integer sum of q·x is exact; a K-quant's scale and
 * minimum multiply its fp16 d and dmin exactly in fp32 (an 11-bit mantissa times a 6- or 8-bit
 * integer), and the sums scale into fp32 in one order for every row, batch and build.
 */
#pragma once
#include <math.h>
#include <stdint.h>

#include "common.h"  /* the formats' sizes, half_to_float, QuantizedX */
#if defined(PACKED_VNNI) || defined(PACKED_AVX2)
#include "x86/kquant.h"  /* KTILE with VNNI or AVX2 */
#else
/* Portable C: the same integer sums and the same fp32 operations in the same order. */
static inline int khigh(const uint8_t* q, int64_t extra, int c, int i, int t, int second) {
  if (extra == 64) return ((q[256 + 4 * i + t] >> (2 * c + second)) & 1) << 4;
  if (extra == 128) return ((q[256 + 64 * second + 4 * i + t] >> (2 * c)) & 3) << 4;
  return 0;
}

static inline float kscale_row(int dtype, const uint8_t* tail, int s, int i, int32_t first, int32_t second, float xs,
                               int32_t total, int32_t half, float xt, float acc) {
  int32_t sum = first + second;
  if (dtype == W_Q5_0) return fmaf((float)(sum - 16 * total), half_to_float(tail + 2 * i) * xs, acc);
  if (dtype == W_Q5_1) {
    acc = fmaf((float)sum, half_to_float(tail + 2 * i) * xs, acc);
    return fmaf(half_to_float(tail + 32 + 2 * i), xt, acc);
  }
  if (dtype == W_Q6_K) {
    float d = half_to_float(tail + 256 + 2 * i);
    float ds0 = d * (float)(int8_t)tail[32 * s + i], ds1 = d * (float)(int8_t)tail[32 * s + 16 + i];
    acc = fmaf((float)(first - 32 * half), ds0 * xs, acc);
    return fmaf((float)(second - 32 * (total - half)), ds1 * xs, acc);
  }
  float ds = half_to_float(tail + 256 + 2 * i) * (float)tail[16 * s + i];
  float dm = half_to_float(tail + 288 + 2 * i) * (float)tail[128 + 16 * s + i];
  acc = fmaf((float)sum, ds * xs, acc);
  return fmaf(dm, -(xt), acc);
}

#define KTILE(NAME, B)                                                                                     \
  static void NAME(int dtype, const uint8_t* g, const QuantizedX* a, int64_t x0, float out[][OUT_COLS]) {   \
    KLayout L = klayout(dtype);                                                                            \
    int64_t blocks = a->blocks;                                                                            \
    for (int b = 0; b < B; b++) {                                                                          \
      float acc[QGROUP] = {0};                                                                             \
      const uint8_t* p = g;                                                                                \
      for (int64_t j0 = 0; j0 < blocks; j0 += L.subs, p += L.group_bytes)                                  \
        for (int s = 0; s < L.subs; s++) {                                                                 \
          const uint8_t* q = p + s * L.sub_bytes;                                                          \
          int64_t xb = (x0 + b) * blocks + j0 + s;                                                         \
          const int16_t* xq = a->q + QBLOCK * xb;                                                          \
          int32_t first[QGROUP] = {0}, second[QGROUP] = {0};                                               \
          for (int c = 0; c < 4; c++)                                                                      \
            for (int i = 0; i < QGROUP; i++)                                                               \
              for (int t = 0; t < 4; t++) {                                                                \
                int w = q[64 * c + 4 * i + t];                                                             \
                first[i] += ((w & 15) | khigh(q, L.extra, c, i, t, 0)) * xq[4 * c + t];                    \
                second[i] += ((w >> 4) | khigh(q, L.extra, c, i, t, 1)) * xq[16 + 4 * c + t];              \
              }                                                                                            \
          for (int i = 0; i < QGROUP; i++)                                                                 \
            acc[i] = kscale_row(dtype, p + L.subs * L.sub_bytes, s, i, first[i], second[i], a->scale[xb],  \
                                a->total[xb], a->half[xb], a->weighted[xb], acc[i]);                       \
        }                                                                                                  \
      for (int i = 0; i < QGROUP; i++) out[i][b] = acc[i];                                                 \
    }                                                                                                      \
  }
#endif

KTILE(ktile4, 4)
KTILE(ktile1, 1)
