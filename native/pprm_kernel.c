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

#if defined(__x86_64__) && defined(__GNUC__)
#define PPRM_PLAIN_AVX512 1
#include <immintrin.h>
#else
#define PPRM_PLAIN_AVX512 0
#endif

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
 * Two code paths compute it, bit for bit alike (both return the residue in
 * [0, q)): the portable scalar loop below, and on CPUs with AVX-512F and
 * AVX-512DQ a float64 loop ("AVX-512 path"), picked at run time with
 * __builtin_cpu_supports (the functions carry target attributes; the build
 * itself stays plain x86-64, no -march=native). pprm_mac_plain_scalar always
 * takes the scalar loop: the reference the tests hold the other to.
 *
 * Exactness, scalar path. Two words below q < 2**60 multiply to less than
 * 2**120, so b <= 256 products sum to less than 2**128: they are accumulated
 * lazily in unsigned __int128, and each output coefficient is reduced ONCE,
 * by a 128-by-64 Barrett reduction (barrett_reduce, pprm_barrett.h). The
 * bound needs the words below their modulus. Rather than spend a pass over
 * the inputs, both paths keep a running maximum of the words they load
 * anyway and return PPRM_EINVAL if one reached its modulus (out is then
 * unspecified).
 *
 * Cache use, scalar path. A work item is one prime l and one tile of PLAIN_TILE
 * coefficients. The item first copies the cts tile of all b and s into the
 * job's own buffer (b * s * PLAIN_TILE * 8 bytes, 256 KiB at b = 64, s = 2,
 * which stays in L2), where consecutive rows are PLAIN_TILE words apart
 * instead of l * n: the hot loop then addresses all of them from one
 * register with constant offsets, and their cache lines no longer all fall
 * in one L1 set (measured: ~1.4x on one core). Then, for each g, the b rows of pts stream past,
 * PLAIN_ROWS at a time, against that copy, into s * PLAIN_TILE accumulators
 * (8 KiB at s = 2) that stay in L1. pts, the big operand (g * b * l * n
 * words, 201 MB in real use), is read exactly once per call, and cts once
 * from memory. A tile row of pts is only PLAIN_TILE * 8 bytes and the next
 * one starts l * n * 8 bytes later, so rows PLAIN_AHEAD ahead are prefetched
 * by hand, as in tile_chunk (measured: ~12% on one core).
 *
 * Speed, scalar path. The hot loop is bound by the latency of the scalar
 * 64x64->128 multiplies, about two per pts word (measured ~17 ms per call at
 * g = 8, b = 64, s = 2, l = 4, n = 8192 on one Zen 5 core, against ~4 ms to
 * stream pts alone; 65 ms at the blind profile's g = 8, b = 64, s = 2, l = 3,
 * n = 16384 on one core of the 2-core Intel Xeon VM below, 35 ms on two);
 * larger tiles, two rows per step, BMI2 (mulx) or longer prefetch distances
 * made no measurable difference.
 *
 * AVX-512 path: exactness. A pts word x < 2**60 is cut into two 30-bit
 * limbs, x = lo + 2**30 hi, a cts word y into four 15-bit limbs,
 * y = c0 + c1 2**15 + c2 2**30 + c3 2**45; each limb converts to a double
 * exactly. Then x y = sum_t d_t 2**(15 t) over six degrees t = 0..5, with
 * lo c_j in degree j and hi c_j in degree j + 2: degrees 2 and 3 get two limb
 * products, the others one. A limb product is at most (2**30 - 1)(2**15 - 1)
 * < 2**45, so over r rows (the sum over b) a degree sum is at most
 * 2 r (2**30 - 1)(2**15 - 1), below 2**53 for r <= PLAIN_RUN = 128: every
 * partial sum, in whatever order the FMAs add them, is an integer below 2**53
 * and so a double, and every FMA returns it exactly. After each run of at
 * most 128 rows the six sums convert to integers (exactly) and are added in
 * 64-bit lanes: e_t < 2**54 for b <= 256. plain_combine then takes the low 60
 * bits of e0 + e1 2**15 + e2 2**30 + e3 2**45 (kept by wrapping arithmetic)
 * and carries the rest into e4, so that the sum is low + e4 2**60 + e5 2**75
 * with low < 2**60 and e4, e5 < 2**55; that is low * 1 + e4 w60 + e5 w75
 * modulo q (w60 = 2**60 mod q, w75 = 2**75 mod q), each product reduced the
 * Shoup way: x w - h q with h = floor(x w' / 2**64), w' = floor(w 2**64 / q),
 * lies in [0, 2q) for any 64-bit x and w < q; h is computed from three
 * 32x32-bit products and may be 0, 1 or 2 short, so each term is in [0, 4q)
 * and their sum in [0, 12q), below 2**64 for q < 2**60, hence exact in 64-bit
 * lanes (wrapping multiplies and subtraction). Four conditional subtractions
 * (8q, 4q, 2q, q) bring it into [0, q).
 *
 * AVX-512 path: layout. The items (l, tile), dealt to the threads as for the
 * scalar path, are cut into units of UNIT_VECS = 8 column vectors (64
 * columns). A unit's g * b pts rows and b * s cts rows are first copied into
 * compact buffers (praw, craw: vector k of row r at (k * rows + r) * 8; 256
 * plus 64 KiB at the blind shape, in L2), one row at a time: each row is 512
 * bytes on a page of its own, so rows STREAM_AHEAD ahead are prefetched (into
 * L1) by hand. For each column vector, its b * s cts words are split into
 * limbs (32 KiB of doubles at b = 64, s = 2, which stay in L1 for all g); the
 * hot loop (plain_vec_body) then takes two g and two s at a time: per row, two
 * pts vectors (lo and hi limbs, four registers), eight split cts vectors, each
 * loaded once for four FMAs, 32 FMAs into 24 accumulators held in registers
 * for the b rows. Two pairs of buffers alternate: while one unit is computed,
 * the next one's rows are copied into the other pair, a row every few steps
 * of the hot loop.
 *
 * AVX-512 path: speed. Measured on a 2-core Intel Xeon VM with AVX-512 (KVM,
 * 3.7 GHz, 2 MiB L2 per core), blind profile shape (g = 8, b = 64, s = 2,
 * l = 3, n = 16384, pts 201 MB read once), per call from Python: 35-39 ms
 * on one core, 18-20 ms on two (scalar path: 65 and 35 ms). The hot loop
 * alone, on copies already made, takes 14 ms on one core (7 on two); the
 * copying of the strided rows out of memory takes about as long again (a
 * plain copy of pts in this order, 512 bytes per row and page, takes 18 ms on
 * one core and 9 on two, against 11.5 and 6 ms to read 201 MB in order), and
 * the two hardly overlap on that VM (as far as measured, the copy's
 * prefetches keep all of a core's line fill buffers busy, and the hot loop's
 * own L2 traffic waits for them: with the copy replaced by its prefetches
 * alone, a call still takes 27-30 and 16 ms). Units of 4 and 16 vectors,
 * prefetches 3 to 8 rows ahead or into L2 only, and one column vector per
 * step reading pts straight from its rows were all slower.
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
    u128 *acc;       /* scalar path, this job's own: s * PLAIN_TILE accumulators */
    uint64_t *ctile; /* scalar path, this job's own: the cts tile, b * s rows of PLAIN_TILE words */
    uint64_t *scratch; /* AVX-512 path, this job's own: plain_avx512_scratch(g, b, s) words */
    size_t g, b, s, l, n, tiles_per_row;
    size_t item_begin, item_end;
    int simd; /* take the AVX-512 path */
    int bad;  /* set when an input word is >= its modulus */
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

/* ---- The AVX-512 path (see "AVX-512 path" above) ---- */

#if PPRM_PLAIN_AVX512
#define PLAIN_AVX512 __attribute__((target("avx512f,avx512dq")))
#define P_LIMB_BITS 30        /* pts words: two limbs */
#define C_LIMB_BITS 15        /* cts words: four limbs */
#define C_LIMBS 4
#define C_SPLIT (C_LIMBS * 8) /* doubles of one split cts vector: limb j of lane i at j * 8 + i */
#define PLAIN_RUN 128         /* rows summed in float64 before the integer sums take over */
#define UNIT_VECS 8           /* column vectors per unit (64 columns), fewer if g * b is large */
#define UNIT_PTS_BUDGET ((size_t)256 << 10) /* bytes of one unit's pts copy */
#define STREAM_AHEAD 6        /* stream rows between a row's prefetch and its copy */

/* The per-prime constants of the final reduction. */
typedef struct {
    uint64_t q;
    uint64_t w60, w75;            /* 2**60 mod q, 2**75 mod q */
    uint64_t one_s, w60_s, w75_s; /* floor(w * 2**64 / q) for w = 1, w60, w75 (Shoup) */
} plain_mod_t;

static plain_mod_t plain_mod_make(uint64_t q) {
    const uint64_t w60 = (uint64_t)(((u128)1 << 60) % q), w75 = (uint64_t)(((u128)1 << 75) % q);
    return (plain_mod_t){q, w60, w75, (uint64_t)(((u128)1 << 64) / q), (uint64_t)(((u128)w60 << 64) / q),
                         (uint64_t)(((u128)w75 << 64) / q)};
}

/* A unit: prime l, columns [c0, c0 + 8 * nv) of it; lanes `last` of its last vector are real. */
typedef struct {
    size_t l, c0, nv;
    __mmask8 last;
} plain_unit_t;

/* The job's next unit after u (u->nv == 0: its first), or 0 if none. Units
   cut each of the job's items (l, tile) into runs of at most `vecs` column
   vectors, so the items, and the threads' shares of them, are as before. */
static int plain_next_unit(const plain_job_t *job, plain_unit_t *u, size_t vecs) {
    size_t it, j;
    if (u->nv == 0) {
        if (job->item_begin >= job->item_end)
            return 0;
        it = job->item_begin;
        j = it % job->tiles_per_row * PLAIN_TILE;
    } else {
        j = u->c0 + 8 * u->nv;
        it = u->l * job->tiles_per_row + u->c0 / PLAIN_TILE;
        if (j % PLAIN_TILE == 0 || j >= job->n) {
            if (++it >= job->item_end)
                return 0;
            j = it % job->tiles_per_row * PLAIN_TILE;
        }
    }
    const size_t l = it / job->tiles_per_row, tile_end = (j / PLAIN_TILE + 1) * PLAIN_TILE;
    const size_t end = tile_end < job->n ? tile_end : job->n;
    const size_t cols = end - j < 8 * vecs ? end - j : 8 * vecs;
    *u = (plain_unit_t){l, j, (cols + 7) / 8, (__mmask8)(cols % 8 ? (1u << (cols % 8)) - 1 : 0xFF)};
    return 1;
}

/* Column vectors per unit: UNIT_VECS, or fewer so that a unit's pts copy stays within UNIT_PTS_BUDGET. */
static size_t plain_unit_vecs(size_t g, size_t b) {
    const size_t v = UNIT_PTS_BUDGET / (g * b * 64);
    return v < 1 ? 1 : v > UNIT_VECS ? UNIT_VECS : v;
}

/* Words of AVX-512 scratch per job: two compact copies of a unit's pts and of
   its cts, and one column vector of cts split into doubles (plain_job_avx512). */
static size_t plain_avx512_scratch(size_t g, size_t b, size_t s) {
    return plain_unit_vecs(g, b) * 8 * (2 * g * b + 2 * b * s) + b * s * C_SPLIT;
}

/* The copy of one unit's inputs into compact buffers, one row at a time:
   stream row r < prows is pts row r (g * b of them, ln words apart from pts0),
   r >= prows cts row r - prows (b * s of them, from cts0); vector k of pts row
   r goes to pdst + (k * prows + r) * 8, of cts row r to cdst + (k * crows + r) * 8. */
typedef struct {
    const uint64_t *pts0, *cts0;
    uint64_t *pdst, *cdst;
    size_t done, rows, prows, crows, ln, nv;
    size_t every, countdown; /* hot-loop steps per stream row, and steps to the next one */
    __mmask8 last;           /* lanes of a row's last vector */
    __m512i mx;              /* lane-wise maximum of the words copied */
} plain_stream_t;

PLAIN_AVX512 static inline __attribute__((always_inline)) const uint64_t *plain_stream_src(const plain_stream_t *st,
                                                                                          size_t r) {
    return r < st->prows ? st->pts0 + r * st->ln : st->cts0 + (r - st->prows) * st->ln;
}

/* Prefetch stream row r: one line per 64 bytes and the line of its last
   word (numpy aligns arrays to 16 bytes only, so a run may touch one more
   line). Into L1: the copy follows a few rows later. */
PLAIN_AVX512 static inline __attribute__((always_inline)) void plain_stream_prefetch(const plain_stream_t *st,
                                                                                    size_t r) {
    const uint64_t *a = plain_stream_src(st, r);
    for (size_t k = 0; k < st->nv; ++k)
        _mm_prefetch((const char *)(a + 8 * k), _MM_HINT_T0);
    const size_t words = 8 * (st->nv - 1) + (size_t)__builtin_popcount(st->last);
    _mm_prefetch((const char *)(a + words) - 1, _MM_HINT_T0);
}

PLAIN_AVX512 static void plain_stream_init(plain_stream_t *st, const plain_job_t *job, const plain_unit_t *u,
                                           uint64_t *pdst, uint64_t *cdst) {
    const size_t prows = job->g * job->b, crows = job->b * job->s;
    *st = (plain_stream_t){job->pts + u->l * job->n + u->c0, job->cts + u->l * job->n + u->c0, pdst, cdst, 0,
                           prows + crows, prows, crows, job->l * job->n, u->nv, 1, 1, u->last,
                           _mm512_setzero_si512()};
    for (size_t r = 0; r < STREAM_AHEAD && r < st->rows; ++r)
        plain_stream_prefetch(st, r);
}

/* Copy the next stream row, if any, and prefetch the row STREAM_AHEAD further. */
PLAIN_AVX512 static inline __attribute__((always_inline)) void plain_stream_row(plain_stream_t *st) {
    const size_t r = st->done;
    if (r >= st->rows)
        return;
    const uint64_t *src = plain_stream_src(st, r);
    uint64_t *dst;
    size_t dstride;
    if (r < st->prows) {
        dst = st->pdst + r * 8;
        dstride = st->prows * 8;
    } else {
        dst = st->cdst + (r - st->prows) * 8;
        dstride = st->crows * 8;
    }
    if (r + STREAM_AHEAD < st->rows)
        plain_stream_prefetch(st, r + STREAM_AHEAD);
    /* Plain loads but for a partial last vector. The row's maximum stays in a
       register: a chain of read-modify-writes of st->mx would wait for a
       store to forward at every vector. */
    const size_t full = st->last == 0xFF ? st->nv : st->nv - 1;
    __m512i mx = _mm512_setzero_si512();
    for (size_t k = 0; k < full; ++k) {
        const __m512i x = _mm512_loadu_si512(src + 8 * k);
        mx = _mm512_max_epu64(mx, x);
        _mm512_store_si512(dst + k * dstride, x);
    }
    if (full < st->nv) {
        const __m512i x = _mm512_maskz_loadu_epi64(st->last, src + 8 * full);
        mx = _mm512_max_epu64(mx, x);
        _mm512_store_si512(dst + full * dstride, x);
    }
    st->mx = _mm512_max_epu64(st->mx, mx);
    st->done = r + 1;
}

/* floor(a * b / 2**64) minus 0, 1 or 2 (b_hi = b >> 32): the exact value
   also has the carry out of al * bl / 2**64 + frac(ah * bl / 2**32) +
   frac(al * bh / 2**32), three terms below 1 each. */
PLAIN_AVX512 static inline __m512i plain_mulhi_approx(__m512i a, __m512i b, __m512i b_hi) {
    const __m512i a_hi = _mm512_srli_epi64(a, 32);
    const __m512i lh = _mm512_mul_epu32(a, b_hi), hl = _mm512_mul_epu32(a_hi, b), hh = _mm512_mul_epu32(a_hi, b_hi);
    return _mm512_add_epi64(hh, _mm512_add_epi64(_mm512_srli_epi64(lh, 32), _mm512_srli_epi64(hl, 32)));
}

/* x - m if x >= m, else x (m < 2**63): x - m wraps above x exactly when x < m. */
PLAIN_AVX512 static inline __m512i plain_vreduce(__m512i x, __m512i m) {
    return _mm512_min_epu64(x, _mm512_sub_epi64(x, m));
}

/* (e0 + e1 2**15 + e2 2**30 + e3 2**45 + e4 2**60 + e5 2**75) mod q for the
   six degree sums of an output vector, each below 2**54 (see "AVX-512 path"). */
PLAIN_AVX512 static inline __m512i plain_combine(const __m512i e[6], const plain_mod_t *pm) {
    const __m512i m60 = _mm512_set1_epi64((1LL << 60) - 1);
    /* low: the low 60 bits of e0 + e1 2**15 + e2 2**30 + e3 2**45, which
       wrapping arithmetic keeps; the carry chain moves the rest into e4, of
       weight 2**60, so that the sum is low + e4 2**60 + e5 2**75. */
    const __m512i low = _mm512_and_si512(
        _mm512_add_epi64(_mm512_add_epi64(e[0], _mm512_slli_epi64(e[1], 15)),
                         _mm512_add_epi64(_mm512_slli_epi64(e[2], 30), _mm512_slli_epi64(e[3], 45))),
        m60);
    const __m512i e1 = _mm512_add_epi64(e[1], _mm512_srli_epi64(e[0], 15));
    const __m512i e2 = _mm512_add_epi64(e[2], _mm512_srli_epi64(e1, 15));
    const __m512i e3 = _mm512_add_epi64(e[3], _mm512_srli_epi64(e2, 15));
    const __m512i e4 = _mm512_add_epi64(e[4], _mm512_srli_epi64(e3, 15));
    /* low * 1 + e4 * w60 + e5 * w75 - h q with h the sum of the three Shoup
       quotients: in [0, 12q), computed modulo 2**64 (12q < 2**64). */
    const __m512i one_s = _mm512_set1_epi64((long long)pm->one_s);
    const __m512i w60_s = _mm512_set1_epi64((long long)pm->w60_s), w75_s = _mm512_set1_epi64((long long)pm->w75_s);
    const __m512i h = _mm512_add_epi64(
        plain_mulhi_approx(low, one_s, _mm512_srli_epi64(one_s, 32)),
        _mm512_add_epi64(plain_mulhi_approx(e4, w60_s, _mm512_srli_epi64(w60_s, 32)),
                         plain_mulhi_approx(e[5], w75_s, _mm512_srli_epi64(w75_s, 32))));
    const __m512i q = _mm512_set1_epi64((long long)pm->q);
    __m512i t = _mm512_add_epi64(low, _mm512_add_epi64(_mm512_mullo_epi64(e4, _mm512_set1_epi64((long long)pm->w60)),
                                                       _mm512_mullo_epi64(e[5], _mm512_set1_epi64((long long)pm->w75))));
    t = _mm512_sub_epi64(t, _mm512_mullo_epi64(h, q));
    t = plain_vreduce(t, _mm512_slli_epi64(q, 3));
    t = plain_vreduce(t, _mm512_slli_epi64(q, 2));
    t = plain_vreduce(t, _mm512_slli_epi64(q, 1));
    return plain_vreduce(t, q);
}

/* Split one column vector of the unit's compact cts copy (row bi * s + si at
   src + (bi * s + si) * 8) into its four 15-bit limbs, as doubles (exact), in
   the order the hot loop reads them: the s values in chunks of two (the
   last one alone when s is odd); for each chunk the b rows; for each row the
   chunk's split vectors (C_SPLIT doubles each) one after the other. */
PLAIN_AVX512 static void plain_split_cts(double *restrict dst, const uint64_t *restrict src, size_t b, size_t s) {
    const __m512i mask = _mm512_set1_epi64((1LL << C_LIMB_BITS) - 1);
    for (size_t si = 0; si < s; ++si) {
        const size_t ch = si / 2, width = s - 2 * ch < 2 ? 1 : 2;
        double *d = dst + (ch * 2 * b + si % 2) * C_SPLIT;
        const uint64_t *w = src + si * 8;
        for (size_t bi = 0; bi < b; ++bi, d += width * C_SPLIT, w += s * 8) {
            const __m512i x = _mm512_load_si512(w);
            _mm512_store_pd(d, _mm512_cvtepu64_pd(_mm512_and_si512(x, mask)));
            _mm512_store_pd(d + 8, _mm512_cvtepu64_pd(_mm512_and_si512(_mm512_srli_epi64(x, C_LIMB_BITS), mask)));
            _mm512_store_pd(d + 16,
                            _mm512_cvtepu64_pd(_mm512_and_si512(_mm512_srli_epi64(x, 2 * C_LIMB_BITS), mask)));
            _mm512_store_pd(d + 24, _mm512_cvtepu64_pd(_mm512_srli_epi64(x, 3 * C_LIMB_BITS)));
        }
    }
}

/* The hot loop: output vectors for G (1 or 2) consecutive g and S (1 or 2)
   consecutive s. The b compact pts vectors of each g (one row every 64
   bytes, from p for the first g and p + b * 8 words for the second) are
   split into their two 30-bit limbs (exact as doubles)
   and multiplied by the split cts at cl (S split vectors per row, rows one
   after the other): lo * c_j goes to degree j, hi * c_j to degree j + 2, six
   float64 sums per output vector, in registers for PLAIN_RUN rows at a time,
   then added up as integers. The outputs are reduced and stored (lanes m) at
   o, out row (gk, k) at o + (gk * s + k) * ln. Every st->every rows, one
   row of the next unit is streamed in. */
PLAIN_AVX512 static inline __attribute__((always_inline)) void
plain_vec_body(const uint64_t *p, size_t b, const double *cl, __mmask8 m, uint64_t *o, size_t s, size_t ln,
               const plain_mod_t *pm, plain_stream_t *st, const int G, const int S) {
    const __m512i mask = _mm512_set1_epi64((1LL << P_LIMB_BITS) - 1);
    __m512i e[2][2][6];
#pragma GCC unroll 2
    for (int gk = 0; gk < G; ++gk)
#pragma GCC unroll 2
        for (int k = 0; k < S; ++k)
#pragma GCC unroll 6
            for (int t = 0; t < 6; ++t)
                e[gk][k][t] = _mm512_setzero_si512();
    for (size_t b0 = 0; b0 < b; b0 += PLAIN_RUN) {
        const size_t b1 = b - b0 < PLAIN_RUN ? b : b0 + PLAIN_RUN;
        __m512d acc[2][2][6];
#pragma GCC unroll 2
        for (int gk = 0; gk < G; ++gk)
#pragma GCC unroll 2
            for (int k = 0; k < S; ++k)
#pragma GCC unroll 6
                for (int t = 0; t < 6; ++t)
                    acc[gk][k][t] = _mm512_setzero_pd();
        const uint64_t *pr = p + b0 * 8;
        const double *cr = cl + b0 * S * C_SPLIT;
        for (size_t bi = b0; bi < b1; ++bi, pr += 8, cr += S * C_SPLIT) {
            __m512d lo[2], hi[2];
#pragma GCC unroll 2
            for (int gk = 0; gk < G; ++gk) {
                const __m512i x = _mm512_load_si512(pr + gk * b * 8);
                lo[gk] = _mm512_cvtepu64_pd(_mm512_and_si512(x, mask));
                hi[gk] = _mm512_cvtepu64_pd(_mm512_srli_epi64(x, P_LIMB_BITS));
            }
#pragma GCC unroll 2
            for (int k = 0; k < S; ++k)
#pragma GCC unroll 4
                for (int j = 0; j < C_LIMBS; ++j) {
                    __m512d c = _mm512_load_pd(cr + k * C_SPLIT + j * 8);
                    /* One load for its 2G uses: GCC would otherwise fold a load into each FMA. */
                    __asm__("" : "+v"(c));
#pragma GCC unroll 2
                    for (int gk = 0; gk < G; ++gk) {
                        acc[gk][k][j] = _mm512_fmadd_pd(lo[gk], c, acc[gk][k][j]);
                        acc[gk][k][j + 2] = _mm512_fmadd_pd(hi[gk], c, acc[gk][k][j + 2]);
                    }
                }
            if (--st->countdown == 0) {
                st->countdown = st->every;
                plain_stream_row(st);
            }
        }
#pragma GCC unroll 2
        for (int gk = 0; gk < G; ++gk)
#pragma GCC unroll 2
            for (int k = 0; k < S; ++k)
#pragma GCC unroll 6
                for (int t = 0; t < 6; ++t)
                    e[gk][k][t] = _mm512_add_epi64(e[gk][k][t], _mm512_cvttpd_epu64(acc[gk][k][t]));
    }
#pragma GCC unroll 2
    for (int gk = 0; gk < G; ++gk)
#pragma GCC unroll 2
        for (int k = 0; k < S; ++k)
            _mm512_mask_storeu_epi64(o + (gk * s + k) * ln, m, plain_combine(e[gk][k], pm));
}

#define PLAIN_VEC(G, S)                                                                                         \
    PLAIN_AVX512 static void plain_vec_##G##_##S(const uint64_t *p, size_t b, const double *cl, __mmask8 m,     \
                                                 uint64_t *o, size_t s, size_t ln, const plain_mod_t *pm,       \
                                                 plain_stream_t *st) {                                          \
        plain_vec_body(p, b, cl, m, o, s, ln, pm, st, G, S);                                                    \
    }
PLAIN_VEC(2, 2)
PLAIN_VEC(2, 1)
PLAIN_VEC(1, 2)
PLAIN_VEC(1, 1)

/* All the job's items on AVX-512, unit by unit; returns 0, or 1 if an input
   word is >= its modulus. A unit is computed from compact copies of its pts
   and cts (praw, craw) while the next unit's rows are copied into the other
   pair of buffers, a row every few steps of the hot loop. */
PLAIN_AVX512 static int plain_job_avx512(const plain_job_t *job) {
    const size_t g = job->g, b = job->b, s = job->s, n = job->n, ln = job->l * n;
    const size_t vecs = plain_unit_vecs(g, b), prows = g * b, crows = b * s;
    uint64_t *praw[2], *craw[2];
    praw[0] = job->scratch;
    praw[1] = praw[0] + vecs * 8 * prows;
    craw[0] = praw[1] + vecs * 8 * prows;
    craw[1] = craw[0] + vecs * 8 * crows;
    double *csplit = (double *)(craw[1] + vecs * 8 * crows);

    plain_unit_t cur = {0, 0, 0, 0}, next;
    if (!plain_next_unit(job, &cur, vecs))
        return 0;
    plain_stream_t st;
    plain_stream_init(&st, job, &cur, praw[0], craw[0]);
    while (st.done < st.rows)
        plain_stream_row(&st);
    for (int buf = 0;; buf ^= 1) {
        const plain_mod_t pm = plain_mod_make(job->moduli[cur.l]);
        if (_mm512_cmpge_epu64_mask(st.mx, _mm512_set1_epi64((long long)pm.q)))
            return 1;
        next = cur;
        const int more = plain_next_unit(job, &next, vecs);
        if (more)
            plain_stream_init(&st, job, &next, praw[buf ^ 1], craw[buf ^ 1]);
        else
            st.rows = 0;
        /* Hot-loop steps per stream row: the copy ends about when the computation does. */
        const size_t steps = cur.nv * ((g + 1) / 2) * ((s + 1) / 2) * b;
        st.every = st.rows && steps > st.rows ? steps / st.rows : 1;
        st.countdown = st.every;
        uint64_t *obase = job->out + cur.l * n + cur.c0;
        for (size_t v = 0; v < cur.nv; ++v) {
            const __mmask8 m = v + 1 < cur.nv ? 0xFF : cur.last;
            plain_split_cts(csplit, craw[buf] + v * crows * 8, b, s);
            for (size_t gi = 0; gi < g; gi += 2) {
                const uint64_t *p = praw[buf] + (v * prows + gi * b) * 8;
                for (size_t si = 0; si < s; si += 2) {
                    uint64_t *o = obase + (gi * s + si) * ln + 8 * v;
                    const double *cs = csplit + si * b * C_SPLIT;
                    if (g - gi >= 2)
                        (s - si >= 2 ? plain_vec_2_2 : plain_vec_2_1)(p, b, cs, m, o, s, ln, &pm, &st);
                    else
                        (s - si >= 2 ? plain_vec_1_2 : plain_vec_1_1)(p, b, cs, m, o, s, ln, &pm, &st);
                }
            }
        }
        if (!more)
            return 0;
        while (st.done < st.rows)
            plain_stream_row(&st);
        cur = next;
    }
}

/* Whether pprm_mac_plain takes the AVX-512 path: the CPU has AVX-512F and DQ. */
static int plain_use_avx512(void) {
    static int have = -1; /* callers may run in threads: the flag is only ever set to one value */
    int h = __atomic_load_n(&have, __ATOMIC_RELAXED);
    if (h < 0) {
        h = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
        __atomic_store_n(&have, h, __ATOMIC_RELAXED);
    }
    return h;
}
#else
static int plain_use_avx512(void) {
    return 0;
}
#endif

static void *plain_thread_main(void *arg) {
    plain_job_t *job = arg;
#if PPRM_PLAIN_AVX512
    if (job->simd) {
        job->bad = plain_job_avx512(job);
        return NULL;
    }
#endif
    for (size_t it = job->item_begin; it < job->item_end && !job->bad; ++it) {
        const size_t l = it / job->tiles_per_row, j0 = it % job->tiles_per_row * PLAIN_TILE;
        job->bad = plain_item(job, l, j0, job->n - j0 < PLAIN_TILE ? job->n - j0 : PLAIN_TILE);
    }
    return NULL;
}

/* pprm_mac_plain, on the AVX-512 path (simd != 0) or the scalar one. */
static int plain_run(const uint64_t *pts, const uint64_t *cts, const uint64_t *moduli, uint64_t *out, size_t g,
                     size_t b, size_t s, size_t l, size_t n, int threads, int simd) {
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

    /* Per job, scalar: s * PLAIN_TILE accumulators and b * s * PLAIN_TILE words of cts tile;
       AVX-512: plain_avx512_scratch(g, b, s) words, at most 1024 g b + 1280 b s bytes. All
       are multiples of 64 bytes, as aligned_alloc wants; refuse sizes that overflow. */
    const size_t bound = SIZE_MAX / (MAX_THREADS * (MAX_PLAIN_B + 2) * PLAIN_TILE * sizeof(uint64_t));
    if (s > bound || (simd && g > bound / 2))
        return PPRM_ENOMEM;
    plain_job_t *jobs = calloc(nthreads, sizeof *jobs);
    u128 *acc = NULL;
    uint64_t *ctile = NULL;
    uint64_t *scratch = NULL;
#if PPRM_PLAIN_AVX512
    if (simd)
        scratch = aligned_alloc(64, nthreads * plain_avx512_scratch(g, b, s) * sizeof(uint64_t));
#endif
    if (!simd) {
        acc = aligned_alloc(64, nthreads * s * PLAIN_TILE * sizeof(u128));
        ctile = aligned_alloc(64, nthreads * b * s * PLAIN_TILE * sizeof(uint64_t));
    }
    if (!jobs || (simd ? !scratch : !acc || !ctile)) {
        free(jobs);
        free(acc);
        free(ctile);
        free(scratch);
        return PPRM_ENOMEM;
    }
    for (size_t i = 0; i < nthreads; ++i) {
        jobs[i] = (plain_job_t){pts, cts, moduli, out, NULL, NULL, NULL, g, b, s, l, n, tiles_per_row,
                                i * items / nthreads, (i + 1) * items / nthreads, simd, 0};
#if PPRM_PLAIN_AVX512
        if (simd)
            jobs[i].scratch = scratch + i * plain_avx512_scratch(g, b, s);
#endif
        if (!simd) {
            jobs[i].acc = acc + i * s * PLAIN_TILE;
            jobs[i].ctile = ctile + i * b * s * PLAIN_TILE;
        }
    }
    int rc = run_jobs(plain_thread_main, jobs, sizeof *jobs, nthreads) ? PPRM_ENOMEM : PPRM_OK;
    for (size_t i = 0; i < nthreads && rc == PPRM_OK; ++i)
        if (jobs[i].bad)
            rc = PPRM_EINVAL;
    free(jobs);
    free(acc);
    free(ctile);
    free(scratch);
    return rc;
}

int pprm_mac_plain(const uint64_t *pts, const uint64_t *cts, const uint64_t *moduli, uint64_t *out, size_t g,
                   size_t b, size_t s, size_t l, size_t n, int threads) {
    return plain_run(pts, cts, moduli, out, g, b, s, l, n, threads, plain_use_avx512());
}

int pprm_mac_plain_scalar(const uint64_t *pts, const uint64_t *cts, const uint64_t *moduli, uint64_t *out,
                          size_t g, size_t b, size_t s, size_t l, size_t n, int threads) {
    return plain_run(pts, cts, moduli, out, g, b, s, l, n, threads, 0);
}

int pprm_mac_plain_simd(void) {
    return plain_use_avx512();
}
