/* attention.h's key scores 16 keys at a time with AVX-512 (dot16_keys), to the bits of its dot16. */
#pragma once
#include <immintrin.h>
#include <stdint.h>

#ifndef __AVX512F__
#error "x86/attention.h is for the avx512 level (-mavx512f)"
#endif

/* Sixteen vectors' pairs of 128-bit lanes, or of floats within them, added: a level of dot16's
 * pairwise sums for two keys at once. */
#define PAIR_LANES(a, b, lo, hi) _mm512_add_ps(_mm512_shuffle_f32x4(a, b, lo), _mm512_shuffle_f32x4(a, b, hi))
#define PAIR_FLOATS(a, b, lo, hi) _mm512_add_ps(_mm512_shuffle_ps(a, b, lo), _mm512_shuffle_ps(a, b, hi))

/* dot16(q, k_t, hd) for 16 keys k_t (rows of hd values, hd a multiple of 16): the same products
 * and the same pairwise sums, so the same bits, but the 16 keys' sums are added together by
 * lane shuffles (4 levels of 8, 4, 2, 1 vector additions) instead of one key at a time. */
static void dot16_keys(const float* q, const float* k, int64_t hd, float* out) {
  __m512 p[16];
  for (int t = 0; t < 16; t++) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < hd; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), _mm512_loadu_ps(k + t * hd + i), acc);
    p[t] = acc;
  }
  for (int t = 0; t < 8; t++)  /* part[j] + part[j + 8]: keys 2t, 2t + 1 in the halves of p[t] */
    p[t] = PAIR_LANES(p[2 * t], p[2 * t + 1], _MM_SHUFFLE(1, 0, 1, 0), _MM_SHUFFLE(3, 2, 3, 2));
  for (int t = 0; t < 4; t++)  /* + part[j + 4]: keys 4t..4t+3, one per 128-bit lane */
    p[t] = PAIR_LANES(p[2 * t], p[2 * t + 1], _MM_SHUFFLE(2, 0, 2, 0), _MM_SHUFFLE(3, 1, 3, 1));
  for (int t = 0; t < 2; t++)  /* + part[j + 2]: lane l holds keys 8t + l and 8t + 4 + l */
    p[t] = PAIR_FLOATS(p[2 * t], p[2 * t + 1], _MM_SHUFFLE(1, 0, 1, 0), _MM_SHUFFLE(3, 2, 3, 2));
  /* + part[j + 1]: float 4l + m holds key l + 4m */
  __m512 sums = PAIR_FLOATS(p[0], p[1], _MM_SHUFFLE(2, 0, 2, 0), _MM_SHUFFLE(3, 1, 3, 1));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  _mm512_storeu_ps(out, _mm512_permutexvar_ps(order, sums));
}
#undef PAIR_LANES
#undef PAIR_FLOATS
