/*
 * Exact multiply-accumulates over RNS residues.
 *
 * pprm_mac_sealed (sealed profile): integer weights times ciphertexts,
 *
 *   out[r][j] = (sum_k weights[k] * block[k][r][j]) mod moduli[r]
 *
 * pprm_mac_plain (blind profile, baby-step/giant-step matrix-vector product):
 * plaintexts times ciphertexts, both in NTT form, coefficient by coefficient,
 *
 *   out[g][s][l][j] = (sum_b pts[g][b][l][j] * cts[b][s][l][j]) mod moduli[l]
 *
 * (described with its code, below pprm_mac_sealed).
 *
 * --- pprm_mac_sealed ---
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

#include "pprm_barrett.h"
#include "pprm_jobs.h"

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
    if (want <= 0)
        want = online_cores();
    if (want > MAX_THREADS)
        want = MAX_THREADS;
    size_t nthreads = (size_t)want < tiles ? (size_t)want : tiles;
    const size_t by_work = d * rn / MIN_WORDS_PER_THREAD;
    if (nthreads > by_work)
        nthreads = by_work > 0 ? by_work : 1;

    job_t *jobs = calloc(nthreads, sizeof *jobs);
    if (!jobs)
        return PPRM_ENOMEM;
    for (size_t i = 0; i < nthreads; ++i) {
        jobs[i] = (job_t){block, weights, moduli, out, d, n, rn, i * tiles / nthreads, (i + 1) * tiles / nthreads};
    }
    const int rc = run_jobs(thread_main, jobs, sizeof *jobs, nthreads) ? PPRM_ENOMEM : PPRM_OK;
    free(jobs);
    return rc;
}

/*
 * --- pprm_mac_plain ---
 *
 * pts is uint64[g][b][l][n], cts uint64[b][s][l][n], out uint64[g][s][l][n];
 * each modulus is in [2, 2**60), every pts and cts word of prime row l must
 * be below moduli[l], and b <= 256.
 *
 * Exactness. Two words below q < 2**60 multiply to less than 2**120, so
 * b <= 256 products sum to less than 2**128: they are accumulated lazily in
 * unsigned __int128, and each output coefficient is reduced ONCE, by a
 * 128-by-64 Barrett reduction (barrett_reduce, pprm_barrett.h). The bound needs the words
 * below their modulus. Rather than spend a pass over the inputs, the kernel
 * keeps a running maximum of the words it loads anyway and returns
 * PPRM_EINVAL if one reached its modulus (out is then unspecified).
 *
 * Cache use. A work item is one prime l and one tile of PLAIN_TILE
 * coefficients. The item first copies the cts tile of all b and s into the
 * job's own buffer (b * s * PLAIN_TILE * 8 bytes, 256 KiB at b = 64, s = 2,
 * which stays in L2), where consecutive rows are PLAIN_TILE words apart
 * instead of l * n: the hot loop then addresses all of them from one
 * register with constant offsets, and their cache lines no longer all fall
 * in one L1 set (measured: ~1.4x on one core). Then, for each g, the b rows of pts stream past,
 * PLAIN_ROWS at a time, against that copy, into s * PLAIN_TILE accumulators
 * (8 KiB at s = 2) that stay in L1. pts, the big operand (g * b * l * n
 * words, 128 MiB in real use), is read exactly once per call, and cts once
 * from memory. A tile row of pts is only PLAIN_TILE * 8 bytes and the next
 * one starts l * n * 8 bytes later, so rows PLAIN_AHEAD ahead are prefetched
 * by hand, as in tile_chunk (measured: ~12% on one core).
 *
 * Speed. The hot loop is bound by the scalar 64x64->128 multiplies, about
 * two per pts word (measured ~17 ms per call at g = 8, b = 64, s = 2, l = 4,
 * n = 8192 on one Zen 5 core, against ~4 ms to stream pts alone); larger
 * tiles, two rows per step, BMI2 (mulx) or longer prefetch distances made no
 * measurable difference. Splitting words into 30-bit limbs for the SIMD
 * 32x32->64 multiply is faster on L1-resident data but needs hand-written
 * intrinsics per instruction set (GCC emulates the 64-bit lane multiply
 * otherwise); it is left out for one exact, portable code path.
 *
 * Threads. Work items are dealt out, in contiguous runs, to `threads`
 * pthreads (threads <= 0 means one; the Python wrapper resolves "all cores"
 * itself), never more threads than items, nor than one per 4 MiB of pts.
 * As for pprm_mac_sealed, the caller has released the GIL and nothing here
 * touches global state, so concurrent calls are safe.
 */

#define PLAIN_TILE 256
#define PLAIN_ROWS 4
#define PLAIN_AHEAD 8 /* pts rows between a load and its prefetch: two steps */
#define COPY_AHEAD 4  /* cts rows between a copy and its prefetch */
#define MAX_PLAIN_B 256
#define MIN_PLAIN_MODULUS 2

static inline uint64_t max64(uint64_t a, uint64_t b) {
    return a > b ? a : b;
}

/* Copy `rows` rows of len words, `stride` apart, into dst (rows PLAIN_TILE
   apart); returns the largest word copied (or mx if larger). The rows
   COPY_AHEAD further down are prefetched: each is on a page of its own. */
PPRM_CLONES
static uint64_t copy_rows(uint64_t *restrict dst, const uint64_t *src, size_t stride, size_t rows, size_t len,
                          uint64_t mx) {
    for (size_t r = 0; r < rows; ++r, src += stride, dst += PLAIN_TILE) {
        if (r + COPY_AHEAD < rows)
            for (size_t i = 0; i < len; i += 8)
                __builtin_prefetch(src + COPY_AHEAD * stride + i, 0, 0);
        for (size_t i = 0; i < len; ++i) {
            mx = max64(mx, src[i]);
            dst[i] = src[i];
        }
    }
    return mx;
}

/* The hot loop, for s = 2 and a full step of PLAIN_ROWS = 4 rows: for i < len,
     acc[i]              += sum_k p_k[i] * c[(2k) * PLAIN_TILE + i]
     acc[PLAIN_TILE + i] += sum_k p_k[i] * c[(2k + 1) * PLAIN_TILE + i]
   with p_k = p + k * ps; returns the largest pts word seen (or mx if larger).
   Four products are summed before an accumulator is touched (below 2**122,
   no overflow), which quarters the accumulator traffic. `ahead` (or NULL) is
   a pts row PLAIN_AHEAD rows down: a line of each of its ahead_rows rows,
   ps apart, is prefetched per 8 coefficients. */
static uint64_t plain_rows_s2(u128 *restrict acc, const uint64_t *p, size_t ps, const uint64_t *restrict c,
                              size_t len, const uint64_t *ahead, size_t ahead_rows, uint64_t mx) {
    const uint64_t *p0 = p, *p1 = p + ps, *p2 = p + 2 * ps, *p3 = p + 3 * ps;
    for (size_t i0 = 0; i0 < len; i0 += 8) {
        for (size_t k = 0; k < ahead_rows; ++k)
            __builtin_prefetch(ahead + k * ps + i0, 0, 0);
        const size_t i1 = i0 + 8 < len ? i0 + 8 : len;
        for (size_t i = i0; i < i1; ++i) {
            const uint64_t x0 = p0[i], x1 = p1[i], x2 = p2[i], x3 = p3[i];
            mx = max64(mx, max64(max64(x0, x1), max64(x2, x3)));
            acc[i] += (u128)x0 * c[0 * PLAIN_TILE + i] + (u128)x1 * c[2 * PLAIN_TILE + i] +
                      (u128)x2 * c[4 * PLAIN_TILE + i] + (u128)x3 * c[6 * PLAIN_TILE + i];
            acc[PLAIN_TILE + i] += (u128)x0 * c[1 * PLAIN_TILE + i] + (u128)x1 * c[3 * PLAIN_TILE + i] +
                                   (u128)x2 * c[5 * PLAIN_TILE + i] + (u128)x3 * c[7 * PLAIN_TILE + i];
        }
    }
    return mx;
}

/* Any s and nr <= PLAIN_ROWS rows (s != 2, or the last step when b is not a
   multiple of PLAIN_ROWS): acc[si * PLAIN_TILE + i] += sum_k p_k[i] * c_k,si[i]
   with c_k,si = c + (k * s + si) * PLAIN_TILE. */
static uint64_t plain_rows_any(u128 *restrict acc, size_t s, const uint64_t *p, size_t ps, const uint64_t *c,
                               size_t nr, size_t len, uint64_t mx) {
    for (size_t k = 0; k < nr; ++k) {
        const uint64_t *pk = p + k * ps;
        for (size_t i = 0; i < len; ++i)
            mx = max64(mx, pk[i]);
        for (size_t si = 0; si < s; ++si) {
            const uint64_t *ck = c + (k * s + si) * PLAIN_TILE;
            u128 *a = acc + si * PLAIN_TILE;
            for (size_t i = 0; i < len; ++i)
                a[i] += (u128)pk[i] * ck[i];
        }
    }
    return mx;
}

typedef struct {
    const uint64_t *pts, *cts, *moduli;
    uint64_t *out;
    u128 *acc;       /* this job's own: s * PLAIN_TILE accumulators */
    uint64_t *ctile; /* this job's own: the cts tile, b * s rows of PLAIN_TILE words */
    size_t g, b, s, l, n, tiles_per_row;
    size_t item_begin, item_end;
    int bad; /* set when an input word is >= its modulus */
} plain_job_t;

/* One work item: prime row l, coefficients [j0, j0 + len). Returns 0, or 1 if
   an input word of the item is >= its modulus. */
static int plain_item(const plain_job_t *job, size_t l, size_t j0, size_t len) {
    const size_t g = job->g, b = job->b, s = job->s;
    const size_t ln = job->l * job->n; /* distance between consecutive rows of all three arrays */
    const uint64_t q = job->moduli[l];
    const uint64_t *pbase = job->pts + l * job->n + j0; /* pts[gi][bi] row at pbase + (gi * b + bi) * ln */
    uint64_t *obase = job->out + l * job->n + j0;       /* out[gi][si] row at obase + (gi * s + si) * ln */
    const uint64_t *ct = job->ctile;                    /* cts[bi][si] row at ct + (bi * s + si) * PLAIN_TILE */
    u128 *acc = job->acc;

    if (copy_rows(job->ctile, job->cts + l * job->n + j0, ln, b * s, len, 0) >= q)
        return 1;
    const barrett_t br = barrett_make(q);
    const size_t rows = g * b; /* pts rows of this item, in memory order */
    uint64_t pmax = 0;
    for (size_t gi = 0; gi < g; ++gi) {
        for (size_t si = 0; si < s; ++si)
            memset(acc + si * PLAIN_TILE, 0, len * sizeof acc[0]);
        for (size_t b0 = 0; b0 < b; b0 += PLAIN_ROWS) {
            const size_t nr = b - b0 < PLAIN_ROWS ? b - b0 : PLAIN_ROWS;
            const size_t k = gi * b + b0;
            const uint64_t *p = pbase + k * ln;
            const uint64_t *c = ct + b0 * s * PLAIN_TILE;
            if (s == 2 && nr == PLAIN_ROWS) {
                const size_t left = rows > k + PLAIN_AHEAD ? rows - (k + PLAIN_AHEAD) : 0;
                const size_t ahead_rows = left < PLAIN_ROWS ? left : PLAIN_ROWS;
                const uint64_t *ahead = ahead_rows ? p + PLAIN_AHEAD * ln : NULL;
                pmax = plain_rows_s2(acc, p, ln, c, len, ahead, ahead_rows, pmax);
            } else {
                pmax = plain_rows_any(acc, s, p, ln, c, nr, len, pmax);
            }
        }
        /* One reduction per output coefficient. */
        for (size_t si = 0; si < s; ++si) {
            uint64_t *o = obase + (gi * s + si) * ln;
            const u128 *a = acc + si * PLAIN_TILE;
            for (size_t i = 0; i < len; ++i)
                o[i] = barrett_reduce(a[i], &br);
        }
    }
    return pmax >= q;
}

static void *plain_thread_main(void *arg) {
    plain_job_t *job = arg;
    for (size_t it = job->item_begin; it < job->item_end && !job->bad; ++it) {
        const size_t l = it / job->tiles_per_row, j0 = it % job->tiles_per_row * PLAIN_TILE;
        job->bad = plain_item(job, l, j0, job->n - j0 < PLAIN_TILE ? job->n - j0 : PLAIN_TILE);
    }
    return NULL;
}

int pprm_mac_plain(const uint64_t *pts, const uint64_t *cts, const uint64_t *moduli, uint64_t *out, size_t g,
                   size_t b, size_t s, size_t l, size_t n, int threads) {
    if (b > MAX_PLAIN_B)
        return PPRM_EINVAL;
    for (size_t r = 0; r < l; ++r)
        if (moduli[r] < MIN_PLAIN_MODULUS || moduli[r] >= MAX_MODULUS)
            return PPRM_EINVAL;
    if (g == 0 || s == 0 || l == 0 || n == 0)
        return PPRM_OK; /* nothing to write */
    if (b == 0) {
        /* The empty sum. */
        memset(out, 0, g * s * l * n * sizeof out[0]);
        return PPRM_OK;
    }

    const size_t tiles_per_row = (n + PLAIN_TILE - 1) / PLAIN_TILE;
    const size_t items = l * tiles_per_row;
    size_t nthreads = threads <= 0 ? 1 : (size_t)threads;
    if (nthreads > MAX_THREADS)
        nthreads = MAX_THREADS;
    if (nthreads > items)
        nthreads = items;
    const size_t by_work = g * b * l * n / MIN_WORDS_PER_THREAD;
    if (nthreads > by_work)
        nthreads = by_work > 0 ? by_work : 1;

    /* Per job: s * PLAIN_TILE accumulators and b * s * PLAIN_TILE words of cts tile
       (both multiples of 64 bytes, as aligned_alloc wants); refuse sizes that overflow. */
    if (s > SIZE_MAX / (MAX_THREADS * (MAX_PLAIN_B + 2) * PLAIN_TILE * sizeof(uint64_t)))
        return PPRM_ENOMEM;
    plain_job_t *jobs = calloc(nthreads, sizeof *jobs);
    u128 *acc = aligned_alloc(64, nthreads * s * PLAIN_TILE * sizeof(u128));
    uint64_t *ctile = aligned_alloc(64, nthreads * b * s * PLAIN_TILE * sizeof(uint64_t));
    if (!jobs || !acc || !ctile) {
        free(jobs);
        free(acc);
        free(ctile);
        return PPRM_ENOMEM;
    }
    for (size_t i = 0; i < nthreads; ++i) {
        jobs[i] = (plain_job_t){pts, cts, moduli, out, acc + i * s * PLAIN_TILE, ctile + i * b * s * PLAIN_TILE,
                                g, b, s, l, n, tiles_per_row, i * items / nthreads, (i + 1) * items / nthreads, 0};
    }
    int rc = run_jobs(plain_thread_main, jobs, sizeof *jobs, nthreads) ? PPRM_ENOMEM : PPRM_OK;
    for (size_t i = 0; i < nthreads && rc == PPRM_OK; ++i)
        if (jobs[i].bad)
            rc = PPRM_EINVAL;
    free(jobs);
    free(acc);
    free(ctile);
    return rc;
}
