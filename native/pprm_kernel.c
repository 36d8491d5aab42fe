/*
 * Exact multiply-accumulate over RNS residues for the sealed profile.
 *
 *   out[r][j] = (sum_k weights[k] * block[k][r][j]) mod moduli[r]
 *
 * block is uint64[d][rows][n] (rows = size * L, row r reduced by moduli[r]),
 * weights int64[d] with |w| <= 2**16, d <= 2**16, moduli each in [1, 2**60).
 * The result is exact for ANY uint64 input word, not only residues below q.
 *
 * Exactness. Every word x is split into 32-bit halves, x = lo + 2**32 hi.
 * |w * lo| and |w * hi| are below 2**16 * 2**32 = 2**48, so CHUNK = 2**13
 * rows of them sum to less than 2**61 and fit a signed 64-bit lane. The lanes
 * are kept as uint64 and updated with wrapping add (w > 0) or subtract
 * (w < 0): the result is the signed sum modulo 2**64, which is the signed sum
 * itself because it is below 2**63 in magnitude. The lanes then give the
 * signed 128-bit total lo + 2**32 hi (below 2**96 for d <= 2**16; summed per
 * chunk when d > CHUNK), and each output coefficient is reduced ONCE, at the
 * end. This is the lazy signed 128-bit accumulation sum_k w_k * x_k, written
 * so that the inner loop uses the SIMD unsigned 32x32->64 multiply (pmuludq)
 * instead of a scalar 64x64->128 one, which keeps it memory-bound.
 *
 * Cache use. The output range is cut into tiles of TILE coefficients; the two
 * lane arrays of a tile (2 * TILE * 8 = 16 KiB) stay in L1 while the d input
 * rows stream past, each read once, in TILE * 8 byte runs, with software
 * prefetch PREFETCH_ROWS rows ahead (see tile_chunk).
 *
 * Threads. Whole tiles are dealt out to `threads` pthreads (0 = all online
 * cores; never more threads than tiles, nor than one per 4 MiB of input, since
 * starting a thread costs more than streaming less); the calling thread does
 * the first share. The caller (cffi, API mode) has released the GIL, and nothing here
 * touches Python or any global state, so concurrent calls are safe.
 */
#include "pprm_kernel.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TILE 1024
#define PREFETCH_ROWS 2
#define CHUNK 8192
#define MAX_THREADS 256
/* Starting a thread costs tens of microseconds; give each at least this many
   input words (4 MiB, roughly 0.1 ms of streaming) or do the work inline. */
#define MIN_WORDS_PER_THREAD ((size_t)1 << 19)
#define MAX_WEIGHT ((int64_t)1 << 16)
#define MAX_MODULUS ((uint64_t)1 << 60)
#define MAX_D ((size_t)1 << 16)

/* Pick the widest SIMD the CPU has at load time; the build stays portable
   (no -march=native), so a wheel built here runs on any x86-64. target_clones
   needs GCC and glibc's ifunc; elsewhere the baseline (SSE2) loop is built. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__)
#define PPRM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PPRM_CLONES
#endif

/* One row of a tile: lanes (lo, hi) += or -= a * (low, high 32 bits of x).
   Written as cache-line groups of 8 so that each group issues one prefetch
   of the same line `ahead` (PREFETCH_ROWS rows further down); the 8-wide
   inner loops vectorise to pmuludq. */
#define ROW_LOOP(OP)                                                                                       \
    do {                                                                                                   \
        size_t i = 0;                                                                                      \
        for (; i + 8 <= len; i += 8) {                                                                     \
            if (ahead)                                                                                     \
                __builtin_prefetch(ahead + i, 0, 0);                                                       \
            for (size_t j = i; j < i + 8; ++j) {                                                           \
                const uint64_t v = x[j];                                                                   \
                lo[j] OP (uint64_t)(uint32_t)v * a;                                                        \
                hi[j] OP (uint64_t)(uint32_t)(v >> 32) * a;                                                \
            }                                                                                              \
        }                                                                                                  \
        for (; i < len; ++i) {                                                                             \
            const uint64_t v = x[i];                                                                       \
            lo[i] OP (uint64_t)(uint32_t)v * a;                                                            \
            hi[i] OP (uint64_t)(uint32_t)(v >> 32) * a;                                                    \
        }                                                                                                  \
    } while (0)

/* Accumulate `rows_in_chunk` rows of one tile into the lanes lo/hi (length len).
   x points at block[k0][tile start]; consecutive rows are `stride` apart.
   A tile row is only TILE * 8 bytes and the next row starts stride * 8 bytes
   later, on a page where the hardware prefetcher has no history, so the rows
   ahead are prefetched by hand (measured: ~1.8x on one core). */
PPRM_CLONES
static void tile_chunk(const uint64_t *x, size_t stride, const int64_t *w, size_t rows_in_chunk, size_t len,
                       uint64_t *restrict lo, uint64_t *restrict hi) {
    for (size_t k = 0; k < rows_in_chunk; ++k, x += stride) {
        const int64_t wk = w[k];
        const uint64_t *ahead = k + PREFETCH_ROWS < rows_in_chunk ? x + PREFETCH_ROWS * stride : NULL;
        const uint64_t a = (uint32_t)(wk < 0 ? -wk : wk);
        if (wk > 0)
            ROW_LOOP(+=);
        else if (wk < 0)
            ROW_LOOP(-=);
    }
}

/* s mod q in [0, q) for |s| < 2**127. */
static inline uint64_t reduce(__int128 s, uint64_t q) {
    const int neg = s < 0;
    const unsigned __int128 u = neg ? -(unsigned __int128)s : (unsigned __int128)s;
    const uint64_t r = (uint64_t)(u % q);
    return (neg && r) ? q - r : r;
}

static inline __int128 combine(uint64_t lo, uint64_t hi) {
    /* Multiply rather than shift: left-shifting a negative value is undefined. */
    return (__int128)(int64_t)lo + (__int128)(int64_t)hi * ((__int128)1 << 32);
}

typedef struct {
    const uint64_t *block;
    const int64_t *weights;
    const uint64_t *moduli;
    uint64_t *out;
    size_t d, n, rn;
    size_t tile_begin, tile_end;
} job_t;

static void run_job(const job_t *job) {
    uint64_t lo[TILE] __attribute__((aligned(64)));
    uint64_t hi[TILE] __attribute__((aligned(64)));
    __int128 total[TILE] __attribute__((aligned(64)));
    const size_t d = job->d, rn = job->rn, n = job->n;
    const int chunked = d > CHUNK;

    for (size_t t = job->tile_begin; t < job->tile_end; ++t) {
        const size_t start = t * TILE;
        const size_t len = rn - start < TILE ? rn - start : TILE;
        if (chunked)
            memset(total, 0, len * sizeof total[0]);
        for (size_t k0 = 0; k0 < d; k0 += CHUNK) {
            const size_t kc = d - k0 < CHUNK ? d - k0 : CHUNK;
            memset(lo, 0, len * sizeof lo[0]);
            memset(hi, 0, len * sizeof hi[0]);
            tile_chunk(job->block + k0 * rn + start, rn, job->weights + k0, kc, len, lo, hi);
            if (chunked)
                for (size_t i = 0; i < len; ++i)
                    total[i] += combine(lo[i], hi[i]);
        }
        /* One reduction per coefficient, by the modulus of its row. */
        size_t row = start / n;
        size_t row_end = (row + 1) * n;
        uint64_t q = job->moduli[row];
        for (size_t i = 0; i < len; ++i) {
            if (start + i == row_end) {
                ++row;
                row_end += n;
                q = job->moduli[row];
            }
            const __int128 s = chunked ? total[i] : combine(lo[i], hi[i]);
            job->out[start + i] = reduce(s, q);
        }
    }
}

static long online_cores = 1;
static pthread_once_t cores_once = PTHREAD_ONCE_INIT;

static void count_cores(void) {
    /* sysconf reads /sys on every call (microseconds); the answer does not change. */
    const long c = sysconf(_SC_NPROCESSORS_ONLN);
    online_cores = c > 0 ? c : 1;
}

static void *thread_main(void *arg) {
    run_job((const job_t *)arg);
    return NULL;
}

int pprm_mac_sealed(const uint64_t *block, const int64_t *weights, const uint64_t *moduli, uint64_t *out, size_t d,
                    size_t rows, size_t n, int threads) {
    if (d > MAX_D)
        return PPRM_EINVAL;
    for (size_t r = 0; r < rows; ++r)
        if (moduli[r] == 0 || moduli[r] >= MAX_MODULUS)
            return PPRM_EINVAL;
    for (size_t k = 0; k < d; ++k)
        if (weights[k] > MAX_WEIGHT || weights[k] < -MAX_WEIGHT)
            return PPRM_EINVAL;
    const size_t rn = rows * n;
    if (rn == 0)
        return PPRM_OK;
    if (d == 0) {
        /* The empty sum. */
        memset(out, 0, rn * sizeof out[0]);
        return PPRM_OK;
    }

    const size_t tiles = (rn + TILE - 1) / TILE;
    long want = threads;
    if (want <= 0) {
        pthread_once(&cores_once, count_cores);
        want = online_cores;
    }
    if (want > MAX_THREADS)
        want = MAX_THREADS;
    size_t nthreads = (size_t)want < tiles ? (size_t)want : tiles;
    const size_t by_work = d * rn / MIN_WORDS_PER_THREAD;
    if (nthreads > by_work)
        nthreads = by_work > 0 ? by_work : 1;

    job_t *jobs = calloc(nthreads, sizeof *jobs);
    pthread_t *tids = calloc(nthreads, sizeof *tids);
    int *started = calloc(nthreads, sizeof *started);
    if (!jobs || !tids || !started) {
        free(jobs);
        free(tids);
        free(started);
        return PPRM_ENOMEM;
    }
    for (size_t i = 0; i < nthreads; ++i) {
        jobs[i] = (job_t){block, weights, moduli, out, d, n, rn, i * tiles / nthreads, (i + 1) * tiles / nthreads};
    }
    for (size_t i = 1; i < nthreads; ++i)
        started[i] = pthread_create(&tids[i], NULL, thread_main, &jobs[i]) == 0;
    run_job(&jobs[0]);
    /* A share whose thread could not be created is done here instead. */
    for (size_t i = 1; i < nthreads; ++i) {
        if (started[i])
            pthread_join(tids[i], NULL);
        else
            run_job(&jobs[i]);
    }
    free(jobs);
    free(tids);
    free(started);
    return PPRM_OK;
}
