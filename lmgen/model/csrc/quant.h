/* Products of block-quantized weights (llama.cpp's Q8_0, Q4_0 and Q4_1; see lmgen/model/quant.py;
 * the other formats in kquant.h) with rows of x. Included by project.h; the VNNI and AVX2 tiles
 * are in x86/quant.h, the portable C here.
 *
 * The weights come in lmgen.model.quant's packed layout: groups of 16 rows, and within a group,
 * block by block, the 16 rows' quants interleaved four bytes at a time, then their 16 scales d
 * (and minimums m). So one 64-byte load holds four weights of each of 16 rows, and one VNNI
 * instruction (vpdpbusd) adds four products to each row's sum: no sum across lanes is ever
 * needed, lane i of the accumulator is row i. Q4 nibbles are unpacked in registers; Q8 bytes are
 * stored offset by 128 (vpdpbusd's weight operand is unsigned) and the offset taken back once a
 * block through the block's sum of x.
 *
 * The activations are rounded to 16-bit integers with one scale per block of 32 (max|x| / 32639:
 * a relative error of 1.5e-5 of the block's largest value, 250 times finer than the weights' own
 * 8-bit rounding and finer than bf16), kept as two signed bytes, x = 256 hi + lo, so that each
 * block's products are summed exactly in integers. Each block's sum is then scaled by d · xs
 * (plus m · Σx for Q4_1) into fp32. Every row of x is summed in one order, alone or in a batch,
 * and the AVX2 and portable C paths do the same arithmetic: all builds agree bit for bit.
 */
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common.h"  /* the formats' sizes, half_to_float, QuantizedX, arena */
#if defined(PACKED_VNNI) || defined(PACKED_AVX2)
#include "x86/quant.h"  /* QTILE with VNNI or AVX2; with VNNI quantize_block too */
#endif

/* One block of 32 values rounded: q, its lo then hi bytes, its scale, sum and first half's sum
 * (with VNNI x86/quant.h's, the same arithmetic 16 values to an instruction). */
#ifndef PACKED_VNNI
static void quantize_block(const float* v, int16_t* q, int8_t* bytes, float* scale, int32_t* total, int32_t* half) {
  int8_t *lo = bytes, *hi = bytes + QBLOCK;
  float top = 0.f, poison = 0.f;  /* poison: NaN if any value is NaN or infinite */
  for (int i = 0; i < QBLOCK; i++) {
    float m = fabsf(v[i]);
    top = m > top ? m : top;
    poison += v[i] * 0.f;
  }
  float inv = top > 0.f && top <= 3.4e38f ? (float)QMAX / top : 0.f;
  int32_t sum = 0, first = 0;
  for (int i = 0; i < QBLOCK; i++) {
    float r = rintf(v[i] * inv);
    r = r > -(float)QMAX ? r : -(float)QMAX;  /* and NaN → -QMAX: the scale carries the NaN */
    r = r < (float)QMAX ? r : (float)QMAX;
    int32_t qi = (int32_t)r, h = (qi + 128) >> 8;
    q[i] = (int16_t)qi, hi[i] = (int8_t)h, lo[i] = (int8_t)(qi - 256 * h), sum += qi;
    first += i < QBLOCK / 2 ? qi : 0;
  }
  *scale = top / (float)QMAX + poison;  /* a NaN or infinity in x makes every product NaN */
  *total = sum;
  *half = first;
}
#endif

static QuantizedX quantize_x(const float* x, int64_t M, int64_t K) {
  int64_t blocks = K / QBLOCK, n = M * blocks;
  /* + 16 rows of bytes: AMX tiles read 16 rows of x, past the batch's last (x86/amx.h) */
  char* m = arena(ARENA_X, (sizeof(int16_t) + 2) * M * K + (sizeof(float) * 2 + sizeof(int32_t) * 2) * n + 2 * 16 * K);
  char* stats = m + 4 * M * K;
  QuantizedX a = {(int16_t*)m, (int8_t*)(m + sizeof(int16_t) * M * K), (float*)stats, (int32_t*)(stats + 4 * n),
                  (int32_t*)(stats + 8 * n), (float*)(stats + 12 * n), blocks};
  for (int64_t b = 0; b < n; b++) {
    quantize_block(x + b * QBLOCK, a.q + b * QBLOCK, a.bytes + 2 * QBLOCK * b, a.scale + b, a.total + b, a.half + b);
    a.weighted[b] = a.scale[b] * (float)a.total[b];
  }
  return a;
}

static void free_x(QuantizedX a) { (void)a; }  /* its memory stays with the thread (arena) */

#if !defined(PACKED_VNNI) && !defined(PACKED_AVX2)
/* Portable C: the same arithmetic in the same order, the 16 rows of a group side by side so
 * that the compiler can vectorise across them. */
#define QTILE(NAME, B)                                                                             \
  static void NAME(int dtype, const uint8_t* g, const QuantizedX* a, int64_t x0, float out[][OUT_COLS]) { \
    int64_t blocks = a->blocks, qb = quant_bytes(dtype), gb = group_block_bytes(dtype);           \
    int32_t off = quant_offset(dtype);                                                             \
    for (int b = 0; b < B; b++) {                                                                  \
      float acc[QGROUP] = {0};                                                                     \
      for (int64_t j = 0; j < blocks; j++) {                                                       \
        const uint8_t* p = g + j * gb;                                                             \
        int64_t xb = (x0 + b) * blocks + j;                                                        \
        const int16_t* xq = a->q + QBLOCK * xb;                                                    \
        int32_t s[QGROUP] = {0};                                                                   \
        for (int c = 0; c < (dtype == W_Q8_0 ? 8 : 4); c++)                                        \
          for (int i = 0; i < QGROUP; i++) {                                                       \
            const uint8_t* w = p + 64 * c + 4 * i;                                                 \
            for (int t = 0; t < 4; t++)                                                            \
              s[i] += dtype == W_Q8_0 ? w[t] * xq[4 * c + t]                                       \
                                      : (w[t] & 15) * xq[4 * c + t] + (w[t] >> 4) * xq[16 + 4 * c + t]; \
          }                                                                                        \
        for (int i = 0; i < QGROUP; i++) {                                                         \
          acc[i] = fmaf((float)(s[i] - off * a->total[xb]), half_to_float(p + qb + 2 * i) * a->scale[xb], acc[i]); \
          if (dtype == W_Q4_1)                                                                     \
            acc[i] = fmaf(half_to_float(p + qb + 32 + 2 * i), a->weighted[xb], acc[i]); \
        }                                                                                          \
      }                                                                                            \
      for (int i = 0; i < QGROUP; i++) out[i][b] = acc[i];                                         \
    }                                                                                              \
  }
#endif

QTILE(qtile4, 4)
QTILE(qtile1, 1)
