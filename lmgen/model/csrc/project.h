/* Products of one input with one or more projections (q, k and v; gate and up), their output
 * rows shared among OpenMP threads, and the thread count every parallel region uses. Included
 * by kernels.c, with the tiles they are computed in: dot.h's, quant.h's, kquant.h's and amx.h's.
 */
#pragma once
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "common.h"
#include "dot.h"  /* the dot products of float weights */
#include "quant.h"  /* ... and of block-quantized ones */
#include "kquant.h"  /* Q5_0, Q5_1 and the K-quants, on the same activations */
#include "amx.h"  /* ... and with AMX tiles, for many rows of x */

/* out[i][b] = weight row r + i · row x0 + b of x, for the 16 rows of the group starting at row r
 * (a multiple of 16) and nb ≤ 4 rows of x. */
static void block_tile(int dtype, const void* W, int64_t r, const QuantizedX* a, int64_t x0, int nb,
                       float out[][OUT_COLS]) {
  int k = dtype >= W_Q5_0;
  const uint8_t* g = (const uint8_t*)W + r / QGROUP * a->blocks * packed_block_bytes(dtype);
  if (nb == 4) {
    (k ? ktile4 : qtile4)(dtype, g, a, x0, out);
    return;
  }
  for (int b = 0; b < nb; b++)  /* a row or few of x (decoding one prompt): column b of out */
    (k ? ktile1 : qtile1)(dtype, g, a, x0 + b, (float(*)[OUT_COLS])&out[0][b]);
}

/* Threads per parallel region, set from Python (the cores available, or what decode found
 * fastest while other processes compete for them). Ignored by a build without OpenMP. */
static int n_threads = 1;
void set_threads(int n) { n_threads = n > 0 ? n : 1; }

/* One projection of a block: y (M, n) = x (M, K) @ W.T + bias, W in weight format dtype. */
typedef struct { int dtype; const void* w; const float* bias; float* y; int64_t n; } Projection;

/* Output rows a job takes at once: a packed group of block rows (quant.h), two with AMX
 * tiles (but for Q6_K), or eight float rows. */
static inline int64_t job_rows(int dtype, int tiles) {
  return dtype < W_Q8_0 ? 8 : tiles && dtype != W_Q6_K ? AMX_GROUPS * QGROUP : QGROUP;
}
static inline int64_t jobs_of(const Projection* p, int tiles) { return (p->n + job_rows(p->dtype, tiles) - 1) / job_rows(p->dtype, tiles); }

/* out[i][c] = weight row r + i · row m + c of x, for the job's nr ≤ 32 rows and nb rows of x
 * (nb: how many it took, up to 4, or 16 with AMX tiles). */
static void job_tile(const Projection* p, int tiles, const QuantizedX* a, const float* x, int64_t K, int64_t M,
                     int64_t r, int nr, int64_t m, int64_t* nb, float out[2 * QGROUP][AMX_ROWS]) {
  float four[QGROUP][4];
  if (tiles && p->dtype >= W_Q8_0 && M - m >= AMX_MIN_ROWS) {
    const uint8_t* g = (const uint8_t*)p->w + r / QGROUP * a->blocks * packed_block_bytes(p->dtype);
    *nb = M - m < AMX_ROWS ? M - m : AMX_ROWS;
    amx_tile(p->dtype, g, nr > QGROUP ? g + a->blocks * packed_block_bytes(p->dtype) : NULL, a, m, (int)*nb, out);
    return;
  }
  *nb = M - m < 4 ? M - m : 4;
  if (p->dtype >= W_Q8_0) {
    for (int64_t h = 0; h < nr; h += QGROUP)  /* two groups: a tiles job with few rows of x left */
      block_tile(p->dtype, p->w, r + h, a, m, (int)*nb, out + h);
    return;
  }
  dot_tile(p->dtype, p->w, r, nr, x + m * K, (int)*nb, K, four);
  for (int i = 0; i < nr; i++)
    for (int c = 0; c < *nb; c++) out[i][c] = four[i][c];
}

/* Bytes of weights a job of p reads per block of 32 inputs: what its time goes by. */
static inline int64_t job_cost(const Projection* p, int tiles) {
  int64_t rows = job_rows(p->dtype, tiles);
  return p->dtype >= W_Q8_0 ? rows / QGROUP * packed_block_bytes(p->dtype) : rows * QBLOCK * (p->dtype == W_F32 ? 4 : 2);
}

/* The first job of thread t of T, the jobs of all projections dealt out in order in equal
 * shares of their cost: a job goes to the thread whose share holds its start. (A mixed GGUF
 * file's q and k may be Q4_K and its v Q6_K, 1.4 times the bytes a row: equal job counts would
 * leave one thread waiting for the other.) */
static int64_t first_job(const Projection* p, int count, int tiles, int64_t t, int64_t T) {
  int64_t total = 0, start = 0, job = 0;  /* start, job: cost and jobs before projection i */
  for (int i = 0; i < count; i++) total += jobs_of(p + i, tiles) * job_cost(p + i, tiles);
  for (int i = 0; i < count; i++) {
    int64_t c = job_cost(p + i, tiles), n = jobs_of(p + i, tiles), need = t * total - start * T;
    int64_t k = need <= 0 ? 0 : (need + c * T - 1) / (c * T);
    if (k < n) return job + k;
    start += n * c, job += n;
  }
  return job;
}

/* Job `job` of the projections p (numbered through them in order): its output rows, plus
 * bias, for every row of x. */
static void run_job(const Projection* p, int tiles, const QuantizedX* a, const float* x, int64_t K, int64_t M,
                    int64_t job) {
  int i = 0;
  while (job >= jobs_of(p + i, tiles)) job -= jobs_of(p + i++, tiles);
  int64_t size = job_rows(p[i].dtype, tiles), r = size * job;
  int nr = p[i].n - r < size ? (int)(p[i].n - r) : (int)size;
  for (int64_t m = 0, nb; m < M; m += nb) {
    float out[2 * QGROUP][AMX_ROWS];
    job_tile(p + i, tiles, a, x, K, M, r, nr, m, &nb, out);
    for (int j = 0; j < nr; j++) {
      float b = p[i].bias ? p[i].bias[r + j] : 0.f;
      for (int c = 0; c < nb; c++) p[i].y[(m + c) * p[i].n + r + j] = out[j][c] + b;
    }
  }
}

/* A thread's share of the jobs, claimed a few at a time from the front by whichever thread gets
 * there: its owner, or, once done with its own, another (a cache line each). */
typedef struct { _Alignas(64) int64_t next; int64_t end; } JobQueue;
enum { MAX_QUEUES = 64, CLAIM = 4 };

/* Several projections of the same input (q, k and v; gate and up) with their rows split
 * across threads as one job: one parallel region, and no fused copy of the weights needed.
 * Each thread starts on its own share (equal bytes, in order: it streams its part of the
 * weights); one that finishes first takes what is left of the other's. */
static void project(const Projection* p, int count, const float* x, int64_t K, int64_t M) {
  int blocked = 0;
  for (int i = 0; i < count; i++) blocked |= p[i].dtype >= W_Q8_0;
  QuantizedX a = blocked ? quantize_x(x, M, K) : (QuantizedX){0};
  int tiles = blocked && use_amx && M >= AMX_MIN_ROWS;
  int64_t T = n_threads < MAX_QUEUES ? n_threads : MAX_QUEUES;
  JobQueue queue[MAX_QUEUES];
  for (int64_t t = 0; t < T; t++)
    queue[t].next = first_job(p, count, tiles, t, T), queue[t].end = first_job(p, count, tiles, t + 1, T);
  #pragma omp parallel num_threads(n_threads)
  {
#ifdef _OPENMP
    int64_t t = omp_get_thread_num();
#else
    int64_t t = 0;
#endif
    if (tiles) amx_begin();  /* each thread's tile registers */
    for (int64_t k = 0; k < T; k++)  /* its own share, then the others' in turn */
      for (JobQueue* q = queue + (t + k) % T;;) {
        int64_t claim = k ? 1 : CLAIM, first = __atomic_fetch_add(&q->next, claim, __ATOMIC_RELAXED);
        if (first >= q->end) break;
        for (int64_t job = first; job < first + claim && job < q->end; job++) run_job(p, tiles, &a, x, K, M, job);
      }
    if (tiles) amx_end();
  }
  if (blocked) free_x(a);
}

/* y (M, N) = x (M, K) @ W.T: a Linear layer's few-row product. */
void gemv(int dtype, const void* W, const float* x, float* y, int64_t N, int64_t K, int64_t M) {
  Projection p = {dtype, W, NULL, y, N};
  project(&p, 1, x, K, M);
}

