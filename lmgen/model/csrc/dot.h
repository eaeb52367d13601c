/* Dot products of float weight rows with rows of x: fp32 and bf16 (the upper half of an fp32).
 * Included by project.h; the AVX-512 tiles are in x86/dot.h.
 *
 * With four or more rows of x (a batch), work comes in tiles of 4 weight rows × 4 rows of x: each
 * weight vector is loaded (and widened) once for the rows of x, each x vector once for the weight
 * rows, so that a batch is limited by arithmetic rather than by loads. With fewer (decoding one
 * prompt) the weight rows are read one after another, one stream the prefetcher follows: there
 * reading memory is the limit. Every dot product is summed in one order whatever tile it is part
 * of — one accumulator over 16 values at a time, then the lanes, then the last K % 16 — so a row
 * of x gets bit for bit the same result alone or in a batch.
 */
#pragma once
#include <stdint.h>
#include <string.h>

#include "common.h"  /* W_F32, W_BF16 */

static inline float bf16_to_f32(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
static inline float f32_value(float v) { return v; }

#ifdef __AVX512F__
#include "x86/dot.h"  /* TILE with AVX-512 */
#else
/* Without AVX-512: the same tiles, one product at a time (the compiler may vectorise across them). */
#define TILE(NAME, T, LOAD, VALUE, R, B)                                                          \
  static void NAME(const void* weights, const float* restrict x, int64_t K, float out[][4]) {     \
    const T* restrict w = (const T*)weights;                                                      \
    for (int i = 0; i < R; i++)                                                                   \
      for (int b = 0; b < B; b++) {                                                               \
        float s = 0.f;                                                                            \
        for (int64_t j = 0; j < K; j++) s += VALUE(w[i * K + j]) * x[b * K + j];                  \
        out[i][b] = s;                                                                            \
      }                                                                                           \
  }
#endif

#define TILES(FORMAT, T)                                           \
  TILE(tile44_##FORMAT, T, load16_##FORMAT, FORMAT##_value, 4, 4)  \
  TILE(tile41_##FORMAT, T, load16_##FORMAT, FORMAT##_value, 4, 1)  \
  TILE(tile14_##FORMAT, T, load16_##FORMAT, FORMAT##_value, 1, 4)  \
  TILE(tile11_##FORMAT, T, load16_##FORMAT, FORMAT##_value, 1, 1)
static inline float bf16_value(uint16_t v) { return bf16_to_f32(v); }
TILES(f32, float)
TILES(bf16, uint16_t)

typedef void (*Tile)(const void*, const float*, int64_t, float[][4]);

/* out[i][b] = row r + i of W · row b of x, for nr ≤ 8 weight rows and nb ≤ 4 rows of x. */
static void dot_tile(int dtype, const void* W, int64_t r, int nr, const float* x, int nb, int64_t K, float out[8][4]) {
  static const Tile tiles[2][4] = {
    {tile44_f32, tile41_f32, tile14_f32, tile11_f32},
    {tile44_bf16, tile41_bf16, tile14_bf16, tile11_bf16},
  };
  const Tile* t = tiles[dtype];
  size_t size = dtype == W_F32 ? 4 : 2;
#define ROW(i) ((const char*)W + (size_t)((r + (i)) * K) * size)
  float one[8][4];
  int i = 0;
  if (nb < 4) {  /* a row or few of x (decoding one prompt): weight rows one after another, a stream */
    for (; i < nr; i++)
      for (int b = 0; b < nb; b++) {
        t[3](ROW(i), x + b * K, K, one);
        out[i][b] = one[0][0];
      }
    return;
  }
  for (; i + 4 <= nr; i += 4) {
    if (nb == 4) {
      t[0](ROW(i), x, K, out + i);
      continue;
    }
    for (int b = 0; b < nb; b++) {
      t[1](ROW(i), x + b * K, K, one);
      for (int j = 0; j < 4; j++) out[i + j][b] = one[j][0];
    }
  }
  for (; i < nr; i++) {
    if (nb == 4) {
      t[2](ROW(i), x, K, one);
      for (int b = 0; b < 4; b++) out[i][b] = one[0][b];
      continue;
    }
    for (int b = 0; b < nb; b++) {
      t[3](ROW(i), x + b * K, K, one);
      out[i][b] = one[0][0];
    }
  }
#undef ROW
}
