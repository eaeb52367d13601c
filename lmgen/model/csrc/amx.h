/* Batches of block products through AMX tiles (x86/amx.h) where the build can: the avx512 level,
 * with a compiler that has AMX's intrinsics; elsewhere these stubs, which never use them. Whether
 * the CPU has AMX is asked at run time (amx_enable). Included by project.h. */
#pragma once
#include <stdint.h>

#include "common.h"  /* QGROUP, QuantizedX */

/* AMX intrinsics came with GCC 11 and clang 12; older compilers build the VNNI level without them. */
#if defined(PACKED_VNNI) && defined(__x86_64__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#include "x86/amx.h"  /* ... and with AMX tiles, for many rows of x */
#else
enum { AMX_ROWS = 16, AMX_MIN_ROWS = 8, AMX_GROUPS = 1 };
static const int use_amx = 0;
int amx_enable(int want) { (void)want; return 0; }
int64_t amx_tile_count(void) { return 0; }
static void amx_begin(void) {}
static void amx_end(void) {}
static void amx_tile(int dtype, const uint8_t* g0, const uint8_t* g1, const QuantizedX* a, int64_t x0, int rows,
                     float out[2 * QGROUP][AMX_ROWS]) {
  (void)dtype, (void)g0, (void)g1, (void)a, (void)x0, (void)rows, (void)out;
}
#endif
