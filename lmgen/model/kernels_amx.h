/* Many rows of x against Q8_0, Q4_0 or Q4_1 blocks with AMX tiles (Intel's matrix unit, Sapphire
 * Rapids on), where the CPU and the kernel allow it. Included by kernels_quant.h in the VNNI build.
 *
 * A block's products are sums of 8-bit integers, exact whatever computes them: one AMX
 * instruction (tdpbsud) computes them for 16 rows of x and the group's 16 weight rows at once,
 * where VNNI needs 16 instructions per row of x. The packed layout is already AMX's: a group's
 * c-th 64 bytes hold values 4c..4c+3 of each of its 16 rows, which is row c of a B tile (Q4's
 * nibbles are spread to bytes first). x's 32 lo and 32 hi bytes of a block are A tiles, 16 rows
 * of x at a time. Each block's two integer tiles are then scaled into fp32 exactly as
 * kernels_quant.h's QTILE does (same operations, same order), so a row of x gets the same bits
 * here, alone through VNNI, or in any batch.
 */
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

enum { AMX_ROWS = 16, AMX_MIN_ROWS = 8 };  /* x rows a tile holds; fewer than MIN: VNNI (faster there) */
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

/* A group's block of weights as a B tile's 8 rows of 64 bytes: Q8's as they are, Q4's nibbles
 * spread to bytes in w (low nibbles: values 4c.., high nibbles: 16 + 4c..). */
__attribute__((target("avx512f,avx512bw"), always_inline)) static inline const uint8_t* weight_rows(int dtype, const uint8_t* g,
                                                                                   uint8_t* w) {
  if (dtype == W_Q8_0) return g;
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  for (int c = 0; c < 4; c++) {
    __m512i raw = _mm512_loadu_si512(g + 64 * c);
    _mm512_store_si512(w + 64 * c, _mm512_and_si512(raw, low4));
    _mm512_store_si512(w + 64 * (4 + c), _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4));
  }
  return w;
}

/* acc[b] += block j's sums of row b of x scaled into fp32, as QTILE does: the same operations
 * in the same order. */
__attribute__((target("avx512f,avx512bw,f16c,fma"), always_inline)) static inline void scale_sums(
    int dtype, const uint8_t* g, const QuantizedX* a, int64_t x0, int64_t j, int rows,
    int32_t lo[AMX_ROWS][QGROUP], int32_t hi[AMX_ROWS][QGROUP], __m512* acc) {
  int64_t qb = quant_bytes(dtype);
  int32_t off = quant_offset(dtype);
  __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(g + qb)));
  for (int b = 0; b < rows; b++) {
    int64_t xb = (x0 + b) * a->blocks + j;
    __m512i s = _mm512_sub_epi32(_mm512_add_epi32(_mm512_load_si512(lo[b]), _mm512_slli_epi32(_mm512_load_si512(hi[b]), 8)),
                                 _mm512_set1_epi32(off * a->total[xb]));
    acc[b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(d, _mm512_set1_ps(a->scale[xb])), acc[b]);
    if (dtype == W_Q4_1)
      acc[b] = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(g + qb + 32))),
                               _mm512_set1_ps(a->scale[xb] * (float)a->total[xb]), acc[b]);
  }
}

/* out[i][b] = weight row i of the groups at g (two, or one if the second is NULL; 16 rows
 * each) · row x0 + b of x, for b < rows ≤ 16. Two groups share x's tiles and give the matrix
 * unit two independent chains of work per block. Inlined for each format (amx_tile). */
__attribute__((target("amx-tile,amx-int8,avx512f,avx512bw"), always_inline)) static inline void amx_tile_of(
    int dtype, const uint8_t* g0, const uint8_t* g1, const QuantizedX* a, int64_t x0, int rows,
    float out[2 * QGROUP][AMX_ROWS]) {
  int64_t blocks = a->blocks, gb = group_block_bytes(dtype), x_stride = 2 * QBLOCK * blocks;
  const int8_t* x = a->bytes + x0 * x_stride;
  _Alignas(64) uint8_t w[2][QBLOCK * QGROUP];
  _Alignas(64) int32_t lo[2][AMX_ROWS][QGROUP], hi[2][AMX_ROWS][QGROUP];
  __m512 acc[2][AMX_ROWS];
  for (int b = 0; b < rows; b++) acc[0][b] = acc[1][b] = _mm512_setzero_ps();
  for (int64_t j = 0; j < blocks; j++, g0 += gb, g1 = g1 ? g1 + gb : NULL, x += 2 * QBLOCK) {
    _tile_loadd(T_XLO, x, x_stride);
    _tile_loadd(T_XHI, x + QBLOCK, x_stride);
    _tile_loadd(T_W0, weight_rows(dtype, g0, w[0]), 64);
    _tile_zero(T_LO0);
    _tile_zero(T_HI0);
    _tile_dpbsud(T_LO0, T_XLO, T_W0);
    _tile_dpbsud(T_HI0, T_XHI, T_W0);
    if (g1) {
      _tile_loadd(T_W1, weight_rows(dtype, g1, w[1]), 64);
      _tile_zero(T_LO1);
      _tile_zero(T_HI1);
      _tile_dpbsud(T_LO1, T_XLO, T_W1);
      _tile_dpbsud(T_HI1, T_XHI, T_W1);
    }
    _tile_stored(T_LO0, lo[0], 64);
    _tile_stored(T_HI0, hi[0], 64);
    if (g1) {
      _tile_stored(T_LO1, lo[1], 64);
      _tile_stored(T_HI1, hi[1], 64);
    }
    scale_sums(dtype, g0, a, x0, j, rows, lo[0], hi[0], acc[0]);
    if (g1) scale_sums(dtype, g1, a, x0, j, rows, lo[1], hi[1], acc[1]);
  }
  for (int h = 0; h < (g1 ? 2 : 1); h++)
    for (int b = 0; b < rows; b++) {
      float t[QGROUP];
      _mm512_storeu_ps(t, acc[h][b]);
      for (int i = 0; i < QGROUP; i++) out[h * QGROUP + i][b] = t[i];
    }
}

__attribute__((target("amx-tile,amx-int8,avx512f,avx512bw"))) static void amx_tile(
    int dtype, const uint8_t* g0, const uint8_t* g1, const QuantizedX* a, int64_t x0, int rows,
    float out[2 * QGROUP][AMX_ROWS]) {
  if (dtype == W_Q8_0) amx_tile_of(W_Q8_0, g0, g1, a, x0, rows, out);
  else if (dtype == W_Q4_0) amx_tile_of(W_Q4_0, g0, g1, a, x0, rows, out);
  else amx_tile_of(W_Q4_1, g0, g1, a, x0, rows, out);
}
