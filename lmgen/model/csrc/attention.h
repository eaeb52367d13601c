/* Decode attention's arithmetic: q · k for each key, in one fixed order (so that a row gets the
 * same bits alone or in any batch), and the softmax-weighted sum of the values. Included by
 * kernels.c, whose decode_block runs them per row and head; 16 keys' scores at once with AVX-512
 * in x86/attention.h.
 */
#pragma once
#include <stdint.h>
#include <string.h>

/* a · b over n values, summed in 16 interleaved partial sums, then pairwise: one fixed order,
 * which the compiler vectorises (a plain running sum it must keep scalar; adding the 16 partials
 * one after another was a chain of 16 dependent adds per key, most of attention's time). */
static inline float dot16(const float* a, const float* b, int64_t n) {
  float part[16] = {0.f};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; j++) part[j] += a[i + j] * b[i + j];
  for (; i < n; i++) part[i % 16] += a[i] * b[i];
  for (int w = 8; w > 0; w /= 2)  /* the partial sums added pairwise: 4 dependent adds, not 16 */
    for (int j = 0; j < w; j++) part[j] += part[j + w];
  return part[0];
}

#ifdef __AVX512F__
#include "x86/attention.h"  /* dot16_keys */
#endif

/* sc[j] = q · key j for n keys (rows of hd values): 16 at a time where the CPU has AVX-512. */
static void key_scores(const float* q, const float* keys, int64_t n, int64_t hd, float* sc) {
  int64_t j = 0;
#ifdef __AVX512F__
  if (hd % 16 == 0)
    for (; j + 16 <= n; j += 16) dot16_keys(q, keys + j * hd, hd, sc + j);
#endif
  for (; j < n; j++) sc[j] = dot16(q, keys + j * hd, hd);
}

/* o += Σ_j p[j] · v[j] over n rows v of hd values, each o[i] summed over j in order (so o summed
 * page by page gets the bits of one pass). For the usual head sizes o stays in registers
 * through the loop (in memory, every key cost a store and a reload of o); the sums are the
 * same either way. */
#define WEIGH(HD)                                                                   \
  static void weigh##HD(const float* p, const float* v, int64_t n, float* o) {      \
    float acc[HD];                                                                  \
    memcpy(acc, o, sizeof acc);                                                     \
    for (int64_t j = 0; j < n; j++)                                                 \
      for (int i = 0; i < HD; i++) acc[i] += p[j] * v[j * HD + i];                  \
    memcpy(o, acc, sizeof acc);                                                     \
  }
WEIGH(64)
WEIGH(128)

static void weigh_values(const float* p, const float* v, int64_t n, int64_t hd, float* o) {
  if (hd == 64) return weigh64(p, v, n, o);
  if (hd == 128) return weigh128(p, v, n, o);
  for (int64_t j = 0; j < n; j++)
    for (int64_t i = 0; i < hd; i++) o[i] += p[j] * v[j * hd + i];
}

