/*
 * Several probes against one block in one pass: the batched exact
 * multiply-accumulate of the sealed profile,
 *
 *   out[b][r][j] = (sum_k weights[b][k] * block[k][r][j]) mod moduli[r]
 *
 * for nb probes at once. block is uint64[d][rows][n] (rows = size * L, row r
 * reduced by moduli[r]), every word below 2**60; weights int64[nb][d] with
 * sum_k |weights[b][k]| <= 2**23 for every b (any unit-norm probe quantised
 * at 2**15 has at most 2**15 * sqrt(d) + d / 2, below 2**20 for d = 512);
 * moduli each in [2, 2**60). The same contract, and bit for bit the same
 * words, as the BLAS path of pprm/matching/kernel_batch.py.
 *
 * Exactness. Each word x < 2**60 is split into 30-bit limbs, x = lo + 2**30 hi
 * with lo, hi < 2**30, and the limbs are held as doubles (exact below 2**53).
 * Every product w * limb and every partial sum of them is an integer of
 * magnitude at most 2**23 * (2**30 - 1) < 2**53, so float64 arithmetic adds
 * and multiplies them exactly in any order, fused or not: the two limb sums
 * come out as exact integers. They are then combined, once per output word,
 * as the signed 128-bit s = hi_sum * 2**30 + lo_sum (|s| < 2**84), made
 * non-negative by adding a multiple of q of at least 2**84, and reduced by a
 * 128-by-64 Barrett reduction (pprm_barrett.h). Float64 rather than integer
 * lanes because a fused multiply-add does in one instruction what the
 * integer route (vpmuldq, then vpaddq) does in two; the kernel is
 * compute-bound from about 16 probes on, so that halves its time there.
 * A block word of 2**60 or more would break the limb bound: the words are
 * OR-ed together as they are packed and such a call returns PPRM_EINVAL.
 *
 * Memory. The block (64 MiB at d = 512, rows = 2, n = 8192) is read from
 * memory exactly once for all nb probes. The columns (the flattened rows * n
 * axis) are cut into strips of SW; a strip is handled KC rows at a time:
 * pack() splits those KC x SW words into a panel of limbs (KC x 2 SW doubles,
 * 128 KiB, in L2), then a register-blocked micro-kernel multiplies it by the
 * weights, MR probes x NR virtual columns at a time, into the strip's
 * accumulators (nb x 2 SW doubles, 64 KiB at nb = 32, in L2), with each
 * NR-column sliver of the panel (KC x NR doubles, 16 KiB for AVX-512)
 * staying in L1 across the probe groups. This is the layout of a BLIS-style
 * GEMM, C[nb x 2 SW] += W[nb x KC] P[KC x 2 SW], with the limb split folded
 * into the packing, so the split gallery never exists outside L2. While the
 * micro-kernel runs on one panel, the rows of the next are prefetched in
 * slices (ahead_t), so memory streams during the arithmetic, not in turns
 * with it (measured: 1.7x at one probe, 1.4x at 16, on one core).
 *
 * Few probes. From 1 to STREAM_MAX_NB probes there is too little arithmetic
 * to hide the packing round trip through L2, so the block is streamed
 * instead (stream_thread_main, FN(stream) in pprm_batch_isa.h): the columns
 * are cut into tiles (one per thread, 2048 to 8192 columns), and for a tile
 * every block row is read as one contiguous run (which the hardware prefetcher follows), STREAM_KU rows
 * at a time; each word is split into its two limbs in registers and
 * w[b][k] * limb is added into per-column accumulators (nb x 2 x tile
 * doubles, in L2), which are reduced per output word as above. Exactness
 * is the same argument: each accumulator is a sum, in some order, of
 * products w * limb with sum_k |w| <= 2**23 and limb < 2**30, so every
 * partial sum is an integer of magnitude below 2**53 and every float64
 * operation on it is exact; the results are the same words bit for bit.
 * Measured per 64 MiB block on the 2-core AVX-512 VM, distinct blocks
 * streamed from memory: 2.4 ms at one probe (28 GB/s; a plain read of the
 * block takes 2.1 ms). One block repeated, which that VM's L3 holds: 1.4 ms
 * at one probe, against 3.6 ms for the panel path.
 *
 * Instruction sets. The three hot loops (pprm_batch_isa.h) are compiled for
 * AVX-512 (zmm, 6 probes x 32 columns), AVX2+FMA (ymm, 6 x 8) and the
 * baseline SSE2 (xmm, 4 x 4) and picked at run time with
 * __builtin_cpu_supports; no -march=native, so the build runs on any x86-64.
 * Other compilers and architectures get the baseline source only.
 *
 * Threads. `threads` pthreads (0 = all online cores; never more threads
 * than strips, nor than one per 4 MiB of block; the calling thread is one of
 * them) take whole strips (few probes: tiles), one at a time, from a shared counter, so a core
 * that another process also wants simply does fewer strips. The caller
 * (cffi, API mode) has released the GIL and nothing here touches global
 * state, so concurrent calls are safe.
 */
#include "pprm_batch.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "pprm_barrett.h"
#include "pprm_jobs.h"

/* Measured on a 2-core AVX-512 VM, full block, 1 and 2 threads: SW x KC =
   128 x 64 beat 64 x 128, 64 x 64 and 256 x 32 or 64 by 5-20% at 32 probes
   and tied at 1. KC * VC * 8 = 128 KiB of panel stays in L2; a KC x NR
   sliver (16 KiB for AVX-512) and the weights of a panel (KC * nb * 8 =
   16 KiB at nb = 32) stay in L1 together. */
#define SW 128     /* columns per strip: a 1 KiB run of every block row */
#define VC (2 * SW) /* virtual columns per strip: SW low limbs, then SW high limbs */
#define KC 64      /* block rows per panel */
#define PACK_AHEAD 4 /* rows between pack()'s prefetch and the load it serves */
#define LIMB_BITS 30
#define LIMB_MASK ((1ULL << LIMB_BITS) - 1)
#define MAX_WORD_BITS 60   /* words must be below 2**60: two limbs of 30 bits */
#define MAX_THREADS 256
#define MIN_WORDS_PER_THREAD ((size_t)1 << 19) /* as pprm_mac_sealed: 4 MiB of block per thread */
/* The few-probes path (see "Few probes" above). Measured on the 2-core
   AVX-512 VM, full block: it beats the panel path at 1 to 5 probes with
   every instruction set; at 6 it loses with AVX-512 (register spills), at 8
   with all three. Tiles of 4096 and 2048 columns tied and beat 8192 and
   16384 (the accumulators fall out of L1/L2 reach, and fewer tiles balance
   worse); 4 rows per pass beat 2 and tied 8. */
#define STREAM_MAX_NB 5  /* most probes it takes */
#define STREAM_KU 4      /* block rows per pass over the accumulators */
/* Columns per tile: one tile per thread where the block allows (the longest
   runs each thread can stream), between these bounds; nb * 2 * tw doubles of
   accumulators (128 KiB a probe at 8192, in L2). Measured over distinct
   blocks streamed from memory (not one block repeated, which the 480 MiB L3
   of that VM holds), 2 threads: 2.41 ms a block at 8192 columns against
   2.68 at 4096 and 2.75 at 2048; the pure read of the block takes 2.1 ms. */
/* Words ahead of each load that the few-probes path prefetches (to L1):
   a gallery mapped from the page cache sits on 4 KiB pages, where the
   hardware prefetcher stops at every page boundary; a software prefetch
   2 KiB ahead starts the next page's walk and fetch early. Measured on the
   1M gallery, memory-mapped: 2.7 ms a block against 3.1 without; 128 to
   384 words tied, 1024 and more lost, and non-temporal prefetches lost. */
#define STREAM_PREFETCH 256
#define STREAM_TW_MIN 2048
#define STREAM_TW_MAX 8192

typedef struct {
    /* Split rows into the panel; returns the OR of the words read. */
    uint64_t (*pack)(double *restrict panel, const uint64_t *src, size_t rn, size_t kc, size_t len,
                     size_t rows_left);
    /* Accumulate mr (<= mr_max) probes times one sliver into c. */
    void (*micro)(const double *restrict sliver, const double *restrict wt, size_t ldw, size_t kc,
                  double *restrict c, size_t mr);
    /* The few-probes path: kc rows of len columns straight from the block
       into nb (<= STREAM_MAX_NB) probes' accumulators; returns the OR of the
       words read. */
    uint64_t (*stream)(const uint64_t *src, size_t rn, size_t kc, size_t len, const double *restrict wt, size_t nb,
                       double *restrict acc);
    size_t mr, nr;
} isa_t;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PPRM_BATCH_X86 1

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,fma")
#define ISA avx512
#define VL 8
#define NV 4
#define MR 6
#include "pprm_batch_isa.h"
#undef ISA
#undef VL
#undef NV
#undef MR
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define ISA avx2
#define VL 4
#define NV 2
#define MR 6
#include "pprm_batch_isa.h"
#undef ISA
#undef VL
#undef NV
#undef MR
#pragma GCC pop_options
#else
#define PPRM_BATCH_X86 0
#endif

/* The baseline: SSE2 on x86-64, whatever 16-byte vectors the target has elsewhere. */
#define ISA base
#define VL 2
#define NV 2
#define MR 4
#include "pprm_batch_isa.h"
#undef ISA
#undef VL
#undef NV
#undef MR

static const isa_t *pick_isa(void) {
#if PPRM_BATCH_X86
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq"))
        return &isa_avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return &isa_avx2;
#endif
    return &isa_base;
}

/* A row's modulus: its Barrett constants and OFFSET_BITS rounded up to a multiple of q. */
typedef struct {
    barrett_t br;
    u128 offset; /* q * ceil(2**OFFSET_BITS / q), below 2**OFFSET_BITS + 2**60 */
    double inv;  /* 1 / q, rounded: the vector reduction's quotient estimate */
} row_mod_t;

/* |s| < 2**53 * 2**30 + 2**53 < 2**84 for the combined limb sums. */
#define OFFSET_BITS 84

static row_mod_t row_mod_make(uint64_t q) {
    const u128 top = (u128)1 << OFFSET_BITS;
    return (row_mod_t){barrett_make(q), (top + q - 1) / q * q, 1.0 / (double)q};
}

/* s mod q in [0, q), for |s| < 2**84: s + offset is non-negative and the
   same modulo q, so no branch on the sign (which a random sum makes
   unpredictable) is needed. */
static inline uint64_t reduce_signed(__int128 s, const row_mod_t *rm) {
    return barrett_reduce((u128)(s + (__int128)rm->offset), &rm->br);
}

/* The final reduction of a run of limb sums (reduce_run, or its AVX-512 copy). */
typedef void (*reduce_fn)(const double *, const double *, const row_mod_t *, size_t, size_t, size_t, uint64_t *);

typedef struct {
    const isa_t *isa;
    reduce_fn reduce;
    const uint64_t *block;
    const double *wt;        /* the weights as doubles, transposed: wt[k * nb + b] */
    const row_mod_t *mods;   /* one per row */
    uint64_t *out;
    double *panel;           /* this job's own: KC * VC doubles */
    double *acc;             /* this job's own: nb * VC doubles */
    size_t d, nb, n, rn;
    size_t strips;
    size_t tw;               /* the few-probes path's tile width */
    size_t *next_strip;      /* shared by the jobs of one call: the next strip nobody has taken */
    uint64_t seen;           /* OR of every block word read */
} many_job_t;

/* o[c] = (hi[c] * 2**30 + lo[c]) mod q for the columns j0 + c, c < len, each
   reduced by its row's modulus. The limb sums are exact integers below 2**53
   in magnitude, so the double -> int64 conversions are exact. */
static void reduce_run(const double *lo, const double *hi, const row_mod_t *mods, size_t n, size_t j0, size_t len,
                       uint64_t *o) {
    for (size_t c = 0; c < len;) {
        const size_t r = (j0 + c) / n, row_end = (r + 1) * n - j0;
        const size_t end = row_end < len ? row_end : len;
        const row_mod_t *rm = &mods[r];
        for (; c < end; ++c) {
            /* Multiply rather than shift: left-shifting a negative value is undefined. */
            const __int128 s = (__int128)(int64_t)hi[c] * ((__int128)1 << LIMB_BITS) + (int64_t)lo[c];
            o[c] = reduce_signed(s, rm);
        }
    }
}

#if PPRM_BATCH_X86
/* reduce_run with AVX-512 (F and DQ), the same words. Per column, with
   s = hi * 2**30 + lo (|s| < 2**84, hi and lo exact integers below 2**53):
   t = rint(fl(s) * fl(1/q)) is within 2**-26 of s / q (|s / q| < 2**24, and
   three roundings of relative size 2**-53 each), so the exact remainder
   r = s - t * q lies in (-q, q); r is computed modulo 2**64 from the low
   words of s and of t * q (exact, since the true r fits an int64), and one
   conditional addition of q gives the canonical residue in [0, q), which is
   what reduce_signed returns. Measured on the 2-core AVX-512 VM: the
   reduction was 8% of a 16-probe block in scalar 128-bit Barrett steps. */
typedef double vd8 __attribute__((vector_size(64)));
typedef int64_t vi8 __attribute__((vector_size(64)));
typedef uint64_t vu8 __attribute__((vector_size(64)));
typedef double vd8u __attribute__((vector_size(64), aligned(8)));
typedef uint64_t vu8u __attribute__((vector_size(64), aligned(8)));

__attribute__((target("avx512f,avx512dq"))) static void reduce_run_avx512(const double *lo, const double *hi,
                                                                          const row_mod_t *mods, size_t n,
                                                                          size_t j0, size_t len, uint64_t *o) {
    const vd8 two30 = (vd8){0} + 0x1p30, round = (vd8){0} + 0x1.8p52;
    for (size_t c = 0; c < len;) {
        const size_t r = (j0 + c) / n, row_end = (r + 1) * n - j0;
        const size_t end = row_end < len ? row_end : len;
        const row_mod_t *rm = &mods[r];
        const vd8 inv = (vd8){0} + rm->inv;
        const vi8 q = (vi8){0} + (int64_t)rm->br.q;
        for (; c + 8 <= end; c += 8) {
            const vd8 h = *(const vd8u *)(hi + c), l = *(const vd8u *)(lo + c);
            /* rint by the 1.5 * 2**52 addition: exact for |x| < 2**51. */
            const vd8 t = ((h * two30 + l) * inv + round) - round;
            const vu8 s = ((vu8)__builtin_convertvector(h, vi8) << LIMB_BITS) + (vu8)__builtin_convertvector(l, vi8);
            vi8 x = (vi8)(s - (vu8)__builtin_convertvector(t, vi8) * (vu8)q);
            x += (x < 0) & q;
            *(vu8u *)(o + c) = (vu8)x;
        }
        for (; c < end; ++c) {
            const __int128 sv = (__int128)(int64_t)hi[c] * ((__int128)1 << LIMB_BITS) + (int64_t)lo[c];
            o[c] = reduce_signed(sv, rm);
        }
    }
}
#endif

static reduce_fn pick_reduce(void) {
#if PPRM_BATCH_X86
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq"))
        return reduce_run_avx512;
#endif
    return reduce_run;
}

/* One call's panels and accumulators, kept for the next call. A query
   calls the kernel once per block; allocated afresh, the 160-320 KiB of
   scratch came from new pages every time (mmap-sized), and the kernel
   spent about 5% of a block zeroing and faulting them in. At most one
   buffer is kept; a call that finds it taken (concurrent calls) or too
   small allocates its own. */
static pthread_mutex_t scratch_lock = PTHREAD_MUTEX_INITIALIZER;
static double *scratch_kept;
static size_t scratch_kept_len;

static double *scratch_take(size_t len) {
    double *p = NULL;
    pthread_mutex_lock(&scratch_lock);
    if (scratch_kept && scratch_kept_len >= len) {
        p = scratch_kept;
        scratch_kept = NULL;
    }
    pthread_mutex_unlock(&scratch_lock);
    /* Rounded up to whole 64-byte lines, as aligned_alloc requires. */
    return p ? p : aligned_alloc(64, (len * sizeof(double) + 63) / 64 * 64);
}

static void scratch_give(double *p, size_t len) {
    if (!p)
        return;
    pthread_mutex_lock(&scratch_lock);
    if (!scratch_kept || scratch_kept_len < len) {
        double *old = scratch_kept;
        scratch_kept = p;
        scratch_kept_len = len;
        p = old;
    }
    pthread_mutex_unlock(&scratch_lock);
    free(p);
}

/* Software prefetch, to L2, of the block rows the next pack() will read,
   spread in equal slices over the micro-kernel calls before it: the memory
   then streams while the FMAs run, instead of in turns. */
typedef struct {
    const uint64_t *first; /* block[row][column] of the first row to fetch, or NULL */
    size_t rn, len;        /* row distance; columns per row */
    size_t rows, done, per; /* rows to fetch, fetched so far, per slice */
} ahead_t;

static void ahead_slice(ahead_t *a) {
    if (!a->first)
        return;
    const size_t end = a->done + a->per < a->rows ? a->done + a->per : a->rows;
    for (size_t r = a->done; r < end; ++r)
        for (size_t i = 0; i < a->len; i += 8) /* one prefetch per 64-byte line */
            __builtin_prefetch(a->first + r * a->rn + i, 0, 2);
    a->done = end;
}

/* Columns [j0, j0 + len) for every probe. next_j0 is the strip this thread
   does next (its first rows are prefetched during the last panel), or
   SIZE_MAX if none. */
static void many_strip(many_job_t *job, size_t j0, size_t len, size_t next_j0) {
    const isa_t *isa = job->isa;
    const size_t d = job->d, nb = job->nb, rn = job->rn, nr = isa->nr;
    double *acc = job->acc;
    /* Micro-kernel calls per panel: the slivers not wholly in the zero
       padding of a last, narrower strip, times the probe groups. */
    const size_t slivers = 2 * ((len + nr - 1) / nr), groups = (nb + isa->mr - 1) / isa->mr;
    memset(acc, 0, nb * VC * sizeof acc[0]);
    for (size_t k0 = 0; k0 < d; k0 += KC) {
        const size_t kc = d - k0 < KC ? d - k0 : KC;
        job->seen |= isa->pack(job->panel, job->block + k0 * rn + j0, rn, kc, len, d - k0);
        ahead_t ahead = {NULL, rn, 0, 0, 0, 0};
        if (k0 + KC < d) {
            const size_t rows = d - (k0 + KC) < KC ? d - (k0 + KC) : KC;
            ahead = (ahead_t){job->block + (k0 + KC) * rn + j0, rn, len, rows, 0, 0};
        } else if (next_j0 != SIZE_MAX) {
            const size_t next_len = rn - next_j0 < SW ? rn - next_j0 : SW;
            ahead = (ahead_t){job->block + next_j0, rn, next_len, d < KC ? d : KC, 0, 0};
        }
        ahead.per = (ahead.rows + slivers * groups - 1) / (slivers * groups);
        /* Sliver by sliver, all probes: the sliver stays in L1 while the
           probe groups pass over it. */
        for (size_t v0 = 0; v0 < VC; v0 += nr) {
            if ((v0 < SW ? v0 : v0 - SW) >= len)
                continue;
            const double *sliver = job->panel + v0 * KC; /* (v0 / nr) * KC * nr */
            for (size_t p0 = 0; p0 < nb; p0 += isa->mr) {
                const size_t mr = nb - p0 < isa->mr ? nb - p0 : isa->mr;
                ahead_slice(&ahead);
                isa->micro(sliver, job->wt + k0 * nb + p0, nb, kc, acc + p0 * VC + v0, mr);
            }
        }
    }
    /* One reduction per output word. */
    for (size_t p = 0; p < nb; ++p)
        job->reduce(acc + p * VC, acc + p * VC + SW, job->mods, job->n, j0, len, job->out + p * rn + j0);
}

/* The few-probes path: tiles of job->tw columns, taken one at a time from
   the shared counter (as the strips of many_thread_main), all d rows of a
   tile streamed into the accumulators (nb * 2 * tw doubles: for probe
   p the low limb sums, then the high), then reduced. */
static void *stream_thread_main(void *arg) {
    many_job_t *job = arg;
    const size_t nb = job->nb, rn = job->rn;
    for (;;) {
        const size_t t = __atomic_fetch_add(job->next_strip, 1, __ATOMIC_RELAXED);
        if (t >= job->strips)
            break;
        const size_t j0 = t * job->tw, len = rn - j0 < job->tw ? rn - j0 : job->tw;
        memset(job->acc, 0, nb * 2 * len * sizeof job->acc[0]);
        job->seen |= job->isa->stream(job->block + j0, rn, job->d, len, job->wt, nb, job->acc);
        for (size_t p = 0; p < nb; ++p) {
            const double *a = job->acc + p * 2 * len;
            job->reduce(a, a + len, job->mods, job->n, j0, len, job->out + p * rn + j0);
        }
    }
    return NULL;
}

static void *many_thread_main(void *arg) {
    many_job_t *job = arg;
    /* Strips are taken one at a time from the shared counter rather than
       dealt out in fixed shares, so a thread whose core is busy with another
       process does fewer of them instead of holding everybody up. Each
       thread claims its next strip before doing the current one, so that it
       knows which rows to prefetch. */
    size_t t = __atomic_fetch_add(job->next_strip, 1, __ATOMIC_RELAXED);
    while (t < job->strips) {
        const size_t next = __atomic_fetch_add(job->next_strip, 1, __ATOMIC_RELAXED);
        const size_t j0 = t * SW;
        many_strip(job, j0, job->rn - j0 < SW ? job->rn - j0 : SW, next < job->strips ? next * SW : SIZE_MAX);
        t = next;
    }
    return NULL;
}

int pprm_mac_many(const uint64_t *block, const int64_t *weights, const uint64_t *moduli, uint64_t *out, size_t d,
                  size_t nb, size_t rows, size_t n, int threads) {
    for (size_t r = 0; r < rows; ++r)
        if (moduli[r] < 2 || moduli[r] >> MAX_WORD_BITS)
            return PPRM_EINVAL;
    for (size_t b = 0; b < nb; ++b) {
        /* Each |w| is checked before it is added, so the sum cannot overflow. */
        int64_t l1 = 0;
        for (size_t k = 0; k < d; ++k) {
            const int64_t w = weights[b * d + k];
            if (w > PPRM_MANY_MAX_ROW_L1 || w < -PPRM_MANY_MAX_ROW_L1)
                return PPRM_EINVAL;
            l1 += w < 0 ? -w : w;
            if (l1 > PPRM_MANY_MAX_ROW_L1)
                return PPRM_EINVAL;
        }
    }
    const size_t rn = rows * n;
    if (rn == 0 || nb == 0)
        return PPRM_OK;
    if (d == 0) {
        /* The empty sum. */
        memset(out, 0, nb * rn * sizeof out[0]);
        return PPRM_OK;
    }

    /* Few probes: stream the block rows (stream_thread_main); the work units
       are then tiles of tw columns rather than strips of SW. */
    const int stream = nb <= STREAM_MAX_NB;
    long want = threads > 0 ? threads : online_cores();
    if (want > MAX_THREADS)
        want = MAX_THREADS;
    size_t strips = stream ? (rn + STREAM_TW_MIN - 1) / STREAM_TW_MIN : (rn + SW - 1) / SW;
    size_t nthreads = (size_t)want < strips ? (size_t)want : strips;
    const size_t by_work = d * rn / MIN_WORDS_PER_THREAD;
    if (nthreads > by_work)
        nthreads = by_work > 0 ? by_work : 1;
    size_t tw = STREAM_TW_MAX;
    if (stream) {
        /* One tile per thread, in whole 64-byte lines, within the bounds. */
        tw = ((rn + nthreads - 1) / nthreads + 7) / 8 * 8;
        tw = tw < STREAM_TW_MIN ? STREAM_TW_MIN : tw > STREAM_TW_MAX ? STREAM_TW_MAX : tw;
        strips = (rn + tw - 1) / tw;
    }

    /* Refuse sizes whose buffers would overflow size_t. */
    if (nb > SIZE_MAX / (MAX_THREADS * VC * sizeof(double)) || d > SIZE_MAX / (nb * sizeof(double)))
        return PPRM_ENOMEM;
    many_job_t *jobs = calloc(nthreads, sizeof *jobs);
    row_mod_t *mods = malloc(rows * sizeof *mods);
    double *wt = malloc(d * nb * sizeof *wt);
    /* Per job: a panel and the accumulators, both multiples of 64 bytes (VC * 8 = 1 KiB);
       or, streaming, the accumulators only (2 * tw * 8 bytes a probe). */
    const size_t per_job = stream ? nb * 2 * tw : KC * VC + nb * VC;
    const size_t scratch_len = nthreads * per_job;
    double *scratch = scratch_take(scratch_len);
    if (!jobs || !mods || !wt || !scratch) {
        free(jobs);
        free(mods);
        free(wt);
        scratch_give(scratch, scratch_len);
        return PPRM_ENOMEM;
    }
    for (size_t r = 0; r < rows; ++r)
        mods[r] = row_mod_make(moduli[r]);
    /* |w| <= 2**23: exact as a double. */
    for (size_t b = 0; b < nb; ++b)
        for (size_t k = 0; k < d; ++k)
            wt[k * nb + b] = (double)weights[b * d + k];

    const isa_t *isa = pick_isa();
    const reduce_fn reduce = pick_reduce();
    size_t next_strip = 0;
    for (size_t i = 0; i < nthreads; ++i) {
        double *mine = scratch + i * per_job;
        jobs[i] = (many_job_t){isa, reduce, block, wt, mods, out, mine, mine + KC * VC, d, nb, n, rn, strips, tw,
                               &next_strip, 0};
        if (stream) {
            jobs[i].panel = NULL;
            jobs[i].acc = mine;
        }
    }
    int rc = run_jobs(stream ? stream_thread_main : many_thread_main, jobs, sizeof *jobs, nthreads) ? PPRM_ENOMEM
                                                                                                 : PPRM_OK;
    for (size_t i = 0; i < nthreads && rc == PPRM_OK; ++i)
        if (jobs[i].seen >> MAX_WORD_BITS)
            rc = PPRM_EINVAL;
    free(jobs);
    free(mods);
    free(wt);
    scratch_give(scratch, scratch_len);
    return rc;
}
