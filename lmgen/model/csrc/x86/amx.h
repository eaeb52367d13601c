/* Many rows of x against block-quantized weights (every format of quant.h and
 * kquant.h) with AMX tiles (Intel's matrix unit, Sapphire Rapids on), where the CPU and
 * the kernel allow it. Included by amx.h in the VNNI build.
 *
 * A block's products are sums of 8-bit integers, exact whatever computes them: one AMX
 * instruction (tdpbsud) computes them for 16 rows of x and the group's 16 weight rows at once,
 * where VNNI needs 16 instructions per row of x. The packed layout is already AMX's: a group's
 * c-th 64 bytes hold values 4c..4c+3 of each of its 16 rows, which is row c of a B tile (Q4's
 * and the K-quants' nibbles and high bits are spread to bytes first, as their VNNI code does in
 * registers). x's 32 lo and 32 hi bytes of a block are A tiles, 16 rows of x at a time. Each
 * block's integer tiles are then scaled into fp32 exactly as the VNNI tiles do (QTILE's
 * operations, kscale_vnni itself), so a row of x gets the same bits here, alone through VNNI,
 * or in any batch. Q6_K scales each half block apart: its B tile is split in two, one half
 * zeroed in each, and the two halves take the tiles a second group would.
 */
#pragma once
#include <cpuid.h>
#include <immintrin.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../common.h"  /* the formats' sizes, QuantizedX */
#include "kquant.h"  /* x86/kquant.h: KWEIGHTS, halves16, kscale_vnni */

#if !(defined(PACKED_VNNI) && defined(__x86_64__))
#error "x86/amx.h is for the avx512 level on x86-64"
#endif

enum { AMX_ROWS = 16, AMX_MIN_ROWS = 8 };  /* x rows a tile holds; fewer than MIN: VNNI (faster there) */
enum { AMX_GROUPS = 2 };  /* groups of 16 weight rows a call takes (Q6_K: one) */
_Static_assert((int)AMX_ROWS == (int)OUT_COLS, "a tile's output array holds the 16 rows of x AMX takes");
/* Tile registers (numbers the intrinsics paste into the instruction: macros, not an enum): x's
 * lo and hi bytes, and for each of two groups its weights and its lo and hi sums. */
#define T_XLO 0
#define T_XHI 1
#define T_W0 2
#define T_LO0 3
#define T_HI0 4
#define T_W1 5
#define T_LO1 6
#define T_HI1 7

static int use_amx = 0;

/* Whether AMX int8 can be used: the CPU has it and the kernel lets this process keep tile
 * state (Linux asks each process to request it: arch_prctl ARCH_REQ_XCOMP_PERM). want = 0
 * turns it off (LMGEN_AMX=0), for comparisons. */
int amx_enable(int want) {
  unsigned a, b, c, d;
  use_amx = 0;
  if (!want || !__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24)) || !(d & (1u << 25))) return 0;
#ifdef SYS_arch_prctl
  if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */)) return 0;
  use_amx = 1;
#endif
  return use_amx;
}

/* Tiles for 16 rows of x (rows past the batch read the arena's padding; their sums are dropped).
 * A constant in memory: GCC 12 drops stores to a local configuration before ldtilecfg. */
static const struct { uint8_t palette, start_row, zero[14]; uint16_t colsb[16]; uint8_t rows[16]; } tile_config = {
    .palette = 1,
    .colsb = {[T_XLO] = QBLOCK, [T_XHI] = QBLOCK, [T_W0] = 64, [T_LO0] = 64, [T_HI0] = 64, [T_W1] = 64, [T_LO1] = 64,
              [T_HI1] = 64},
    .rows = {[T_XLO] = AMX_ROWS, [T_XHI] = AMX_ROWS, [T_W0] = QBLOCK / 4, [T_LO0] = AMX_ROWS, [T_HI0] = AMX_ROWS,
             [T_W1] = QBLOCK / 4, [T_LO1] = AMX_ROWS, [T_HI1] = AMX_ROWS},
};

__attribute__((target("amx-tile"))) static void amx_begin(void) { _tile_loadconfig(&tile_config); }

__attribute__((target("amx-tile"))) static void amx_end(void) { _tile_release(); }

/* Block j of the group at g as a B tile's 8 rows of 64 bytes (row c: values 4c..4c+3 of each of
 * the 16 rows): Q8_0's as stored, the others' spread to bytes in w. part 1 keeps values 0-15
 * (rows 4-7 zero), part 2 values 16-31, part 0 all. */
static inline __attribute__((always_inline)) const uint8_t* weight_rows(int dtype, const uint8_t* g, int64_t j,
                                                                        uint8_t* w, int part) {
  if (dtype == W_Q8_0) return g + j * group_block_bytes(dtype);
  const __m512i zero = _mm512_setzero_si512(), low4 = _mm512_set1_epi8(0x0f);
  __m512i w0, w1, hA = zero, hB = zero;
  KLayout L = klayout(dtype);
  const uint8_t* q = dtype < W_Q5_0 ? g + j * group_block_bytes(dtype)
                                    : g + j / L.subs * L.group_bytes + j % L.subs * L.sub_bytes;
  if (dtype >= W_Q5_0 && L.extra) hA = _mm512_loadu_si512(q + 256);
  if (dtype >= W_Q5_0 && L.extra == 128) hB = _mm512_loadu_si512(q + 320);
  for (int c = 0; c < 4; c++) {  /* low nibbles: values 4c.., high nibbles: 16 + 4c.. */
    if (dtype < W_Q5_0) {
      __m512i raw = _mm512_loadu_si512(q + 64 * c);
      w0 = _mm512_and_si512(raw, low4), w1 = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4);
    } else
      KWEIGHTS(w0, w1, q, c, L.extra, hA, hB);
    _mm512_store_si512(w + 64 * c, part == 2 ? zero : w0);
    _mm512_store_si512(w + 64 * (4 + c), part == 1 ? zero : w1);
  }
  return w;
}

/* acc + block j's products of row xb of x, given its integer sums (values 0-15 and 16-31 apart
 * for Q6_K, else all in sum), as the VNNI tiles compute them. */
static inline __attribute__((always_inline)) __m512 scale_block(int dtype, const uint8_t* g, int64_t j,
                                                                const QuantizedX* a, int64_t xb, __m512i sum,
                                                                __m512i second, __m512 acc) {
  if (dtype >= W_Q5_0) {
    KLayout L = klayout(dtype);
    const uint8_t* tail = g + j / L.subs * L.group_bytes + L.subs * L.sub_bytes;
    return kscale_vnni(dtype, tail, (int)(j % L.subs), sum, second, a->scale[xb], a->total[xb], a->half[xb], a->weighted[xb], acc);
  }
  const uint8_t* p = g + j * group_block_bytes(dtype) + quant_bytes(dtype);
  __m512i s = _mm512_sub_epi32(sum, _mm512_set1_epi32(quant_offset(dtype) * a->total[xb]));
  acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(halves16(p), _mm512_set1_ps(a->scale[xb])), acc);
  if (dtype == W_Q4_1) acc = _mm512_fmadd_ps(halves16(p + 32), _mm512_set1_ps(a->weighted[xb]), acc);
  return acc;
}

static inline __m512i tile_sum(const int32_t* lo, const int32_t* hi) {
  return _mm512_add_epi32(_mm512_load_si512(lo), _mm512_slli_epi32(_mm512_load_si512(hi), 8));
}

/* out[i][b] = weight row i of the groups at g0 and g1 (16 rows each; g1 NULL: one group, as
 * always for Q6_K) · row x0 + b of x, for b < rows ≤ 16. Two groups share x's tiles and give the
 * matrix unit two independent chains of work per block. Inlined for each format (amx_tile). */
static inline __attribute__((target("amx-tile,amx-int8"), always_inline)) void amx_tile_of(
    int dtype, const uint8_t* g0, const uint8_t* g1, const QuantizedX* a, int64_t x0, int rows,
    float out[2 * QGROUP][AMX_ROWS]) {
  int64_t blocks = a->blocks, x_stride = 2 * QBLOCK * blocks;
  int split = dtype == W_Q6_K, second = split || g1;
  const int8_t* x = a->bytes + x0 * x_stride;
  _Alignas(64) uint8_t w[2][QBLOCK * QGROUP];
  _Alignas(64) int32_t lo[2][AMX_ROWS][QGROUP], hi[2][AMX_ROWS][QGROUP];
  __m512 acc[2][AMX_ROWS];
  for (int b = 0; b < rows; b++) acc[0][b] = acc[1][b] = _mm512_setzero_ps();
  for (int64_t j = 0; j < blocks; j++, x += 2 * QBLOCK) {
    _tile_loadd(T_XLO, x, x_stride);
    _tile_loadd(T_XHI, x + QBLOCK, x_stride);
    _tile_loadd(T_W0, weight_rows(dtype, g0, j, w[0], split), 64);
    _tile_zero(T_LO0);
    _tile_zero(T_HI0);
    _tile_dpbsud(T_LO0, T_XLO, T_W0);
    _tile_dpbsud(T_HI0, T_XHI, T_W0);
    if (second) {
      _tile_loadd(T_W1, weight_rows(dtype, split ? g0 : g1, j, w[1], 2 * split), 64);
      _tile_zero(T_LO1);
      _tile_zero(T_HI1);
      _tile_dpbsud(T_LO1, T_XLO, T_W1);
      _tile_dpbsud(T_HI1, T_XHI, T_W1);
    }
    _tile_stored(T_LO0, lo[0], 64);
    _tile_stored(T_HI0, hi[0], 64);
    if (second) {
      _tile_stored(T_LO1, lo[1], 64);
      _tile_stored(T_HI1, hi[1], 64);
    }
    for (int b = 0; b < rows; b++) {
      int64_t xb = (x0 + b) * blocks + j;
      __m512i s0 = tile_sum(lo[0][b], hi[0][b]), none = _mm512_setzero_si512();
      if (split) acc[0][b] = scale_block(dtype, g0, j, a, xb, s0, tile_sum(lo[1][b], hi[1][b]), acc[0][b]);
      else acc[0][b] = scale_block(dtype, g0, j, a, xb, s0, none, acc[0][b]);
      if (g1 && !split) acc[1][b] = scale_block(dtype, g1, j, a, xb, tile_sum(lo[1][b], hi[1][b]), none, acc[1][b]);
    }
  }
  for (int h = 0; h < (g1 && !split ? 2 : 1); h++)
    for (int b = 0; b < rows; b++) {
      float t[QGROUP];
      _mm512_storeu_ps(t, acc[h][b]);
      for (int i = 0; i < QGROUP; i++) out[h * QGROUP + i][b] = t[i];
    }
}

#define AMX_FORMAT(F) \
  case F:             \
    amx_tile_of(F, g0, g1, a, x0, rows, out); \
    return;

static int64_t amx_tiles_run = 0;  /* tile products computed, for the tests (amx_tile_count) */

int64_t amx_tile_count(void) { return __atomic_load_n(&amx_tiles_run, __ATOMIC_RELAXED); }

static __attribute__((target("amx-tile,amx-int8"))) void amx_tile(int dtype, const uint8_t* g0, const uint8_t* g1,
                                                                   const QuantizedX* a, int64_t x0, int rows,
                                                                   float out[2 * QGROUP][AMX_ROWS]) {
  __atomic_fetch_add(&amx_tiles_run, 1, __ATOMIC_RELAXED);
  switch (dtype) {
    AMX_FORMAT(W_Q8_0) AMX_FORMAT(W_Q4_0) AMX_FORMAT(W_Q4_1) AMX_FORMAT(W_Q5_0) AMX_FORMAT(W_Q5_1)
    AMX_FORMAT(W_Q4_K) AMX_FORMAT(W_Q5_K) AMX_FORMAT(W_Q6_K)
  }
}
#undef AMX_FORMAT
