/* The sealed profile's per-block masking, in the residue domain.
 *
 * For one block the matcher holds S = (c0, c1), the encrypted scores in
 * SEAL's NTT form at the single data prime q0, and computes (complex packing,
 * pprm/matching/sealed.py)
 *
 *     z    = S - tau                       (tau's NTT form subtracted from c0)
 *     conj = conjugate(z)                  (Galois element 2N-1, then a key switch
 *                                           through the special prime P)
 *     out  = INTT(z * A + conj * B) + (noise, 0)
 *
 * with A, B the NTT forms of the exact integer mask polynomials. SEAL's
 * Python binding can only reach its objects through files, which made this
 * step cost as much as the multiply-accumulate; here it is a handful of
 * length-N transforms on arrays the caller owns, and no temporary file.
 *
 * Every step is integer arithmetic modulo q0 or P, written to give the same
 * words as SEAL 4.x (NTT tables built from the minimal primitive 2N-th root,
 * bit-reversed power tables, the Galois permutation of GaloisTool, and
 * switch_key_inplace's rounding through P), so the result is bit for bit
 * SEAL's; tests/matching/test_mask_kernel.py checks that against SEAL itself.
 * The tables are computed in Python (pprm/matching/mask_kernel.py) and only
 * read here.
 *
 * The transforms are Harvey's lazy butterflies, as SEAL's own: between
 * layers a value is only known to be below 2q (inverse) or 4q (forward),
 * and one correction at the end makes it canonical. Intermediate words thus
 * differ from SEAL's, but every transform's output (and every step's) is the
 * unique residue in [0, q), so the results stay bit-exact. The last inverse
 * layer also applies the 1/N scaling. On CPUs with AVX-512F/DQ (checked at
 * run time; the build itself targets plain x86-64, and q0, P < 2**61 keep 8q
 * below 2**64) the transforms and the multiplying elementwise steps run
 * eight lanes at a time, with bounds of 4q and 8q that pay for a cheaper
 * high product, and the layers whose groups fit in the level-1 cache run
 * block by block; other CPUs take the scalar code.
 */
#include "pprm_mask.h"

#include <stdlib.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(PPRM_MASK_SCALAR_ONLY)
#define PPRM_MASK_AVX512 1
#include <immintrin.h>
#else
#define PPRM_MASK_AVX512 0
#endif

typedef unsigned __int128 u128;

/* Branch-free: random residues make a branch on "r >= q" a coin toss for the
 * predictor, and these run in every butterfly. Valid for r < 2q, q < 2**63. */
static inline uint64_t reduce_once(uint64_t r, uint64_t q) {
    uint64_t d = r - q;
    return d + (q & (uint64_t)-(int64_t)(d >> 63));
}

/* x * w mod q up to one q: a value in [0, 2q) for any 64-bit x. With
 * wq = floor(w * 2**64 / q), x * wq / 2**64 falls short of x * w / q by
 * less than 1 (x < 2**64) and the floor loses less than 1 more. */
static inline uint64_t mul_shoup_lazy(uint64_t x, uint64_t w, uint64_t wq, uint64_t q) {
    uint64_t hi = (uint64_t)(((u128)x * wq) >> 64);
    return x * w - hi * q;
}

static inline uint64_t mul_shoup(uint64_t x, uint64_t w, uint64_t wq, uint64_t q) {
    return reduce_once(mul_shoup_lazy(x, w, wq, q), q);
}

/* x mod q for x < 2**128 with x < 2q**2, by Barrett reduction with
 * ratio = floor(2**128 / q) = r1 * 2**64 + r0 (SEAL's barrett_reduce_128).
 * The quotient estimate drops x * (2**128/q - ratio) / 2**128 < 2q**2/2**128
 * and the low word of lo * r0, together less than 1 for q < 2**61, so it is
 * the true quotient or one less and one correction suffices. */
static inline uint64_t barrett_128(u128 x, uint64_t q, uint64_t r0, uint64_t r1) {
    uint64_t lo = (uint64_t)x, hi = (uint64_t)(x >> 64);
    u128 t = ((u128)lo * r0) >> 64;
    t += (u128)lo * r1;
    uint64_t mid = (uint64_t)t, carry_hi = (uint64_t)(t >> 64);
    u128 s = (u128)hi * r0 + mid;
    uint64_t q_est = hi * r1 + carry_hi + (uint64_t)(s >> 64);
    return reduce_once(lo - q_est * q, q);
}

static inline uint64_t add_mod(uint64_t a, uint64_t b, uint64_t q) {
    return reduce_once(a + b, q);
}

static inline uint64_t sub_mod(uint64_t a, uint64_t b, uint64_t q) {
    return reduce_once(a + q - b, q);
}

/* The last inverse layer's two constants: 1/N, and its root times 1/N, each
 * with its Shoup quotient. */
typedef struct {
    uint64_t inv_n, inv_n_shoup, w, w_shoup;
} last_layer;

static last_layer last_layer_of(const pprm_ntt_table *t) {
    uint64_t w = (uint64_t)(((u128)t->inv_roots[t->n - 1] * t->inv_n) % t->q);
    last_layer l = {t->inv_n, t->inv_n_shoup, w, (uint64_t)(((u128)w << 64) / t->q)};
    return l;
}

/* ---- Scalar transforms (any x86-64, and any N). ---- */

/* Forward negacyclic NTT in place, SEAL's order: Cooley-Tukey layers, the
 * roots in bit-reversed order starting at index 1. Inputs below 4q, outputs
 * in [0, q). Each butterfly takes x, y < 4q: x is brought below 2q, y * w
 * is below 2q (mul_shoup_lazy), so x + v and x - v + 2q are below 4q again;
 * 4q < 2**63 for q < 2**61. */
static void ntt_forward_scalar(uint64_t *restrict a, const pprm_ntt_table *t) {
    const uint64_t *restrict roots = t->roots, *restrict roots_shoup = t->roots_shoup;
    const uint64_t q = t->q, q2 = 2 * q;
    size_t n = t->n, gap = n >> 1, k = 0;
    for (size_t m = 1; m < n; m <<= 1, gap >>= 1) {
        for (size_t i = 0; i < m; i++) {
            ++k;
            uint64_t w = roots[k], wq = roots_shoup[k];
            uint64_t *restrict x = a + 2 * gap * i, *restrict y = x + gap;
            if (gap == 1) { /* the last layer: also make both outputs canonical */
                uint64_t u = reduce_once(x[0], q2), v = mul_shoup_lazy(y[0], w, wq, q);
                x[0] = reduce_once(reduce_once(u + v, q2), q);
                y[0] = reduce_once(reduce_once(u + q2 - v, q2), q);
                continue;
            }
            for (size_t j = 0; j < gap; j++) {
                uint64_t u = reduce_once(x[j], q2), v = mul_shoup_lazy(y[j], w, wq, q);
                x[j] = u + v;
                y[j] = u + q2 - v;
            }
        }
    }
}

/* Inverse negacyclic NTT in place (Gentleman-Sande layers, SEAL's inverse
 * root order), scaled by 1/N, then plus add[] (mod q) if add is not NULL.
 * Inputs below 2q, outputs in [0, q). Both butterfly outputs stay below 2q:
 * x + y < 4q loses 2q at most once, and (x - y + 2q) * w is lazy Shoup. */
static void ntt_inverse_scalar(uint64_t *restrict a, const pprm_ntt_table *t, const uint64_t *restrict add) {
    const uint64_t *restrict roots = t->inv_roots, *restrict roots_shoup = t->inv_roots_shoup;
    const uint64_t q = t->q, q2 = 2 * q;
    size_t n = t->n, gap = 1, k = 0;
    for (size_t m = n >> 1; m > 1; m >>= 1, gap <<= 1) {
        for (size_t i = 0; i < m; i++) {
            ++k;
            uint64_t w = roots[k], wq = roots_shoup[k];
            uint64_t *restrict x = a + 2 * gap * i, *restrict y = x + gap;
            for (size_t j = 0; j < gap; j++) {
                uint64_t u = x[j], v = y[j];
                x[j] = reduce_once(u + v, q2);
                y[j] = mul_shoup_lazy(u + q2 - v, w, wq, q);
            }
        }
    }
    last_layer l = last_layer_of(t);
    uint64_t *restrict x = a, *restrict y = a + gap;
    for (size_t j = 0; j < gap; j++) {
        uint64_t u = x[j], v = y[j];
        x[j] = mul_shoup(u + v, l.inv_n, l.inv_n_shoup, q);
        y[j] = mul_shoup(u + q2 - v, l.w, l.w_shoup, q);
    }
    if (add)
        for (size_t j = 0; j < n; j++)
            a[j] = add_mod(a[j], add[j], q);
}

/* ---- AVX-512F/DQ transforms (N >= 16), same arithmetic eight lanes wide. ---- */
#if PPRM_MASK_AVX512
#define AVX512 __attribute__((target("avx512f,avx512dq")))

/* floor(a * b / 2**64) exactly, from four 32x32-bit products; b_hi = b >> 32.
 * mid collects three values below 2**32 each, so it cannot overflow. */
AVX512 static inline __m512i mulhi64(__m512i a, __m512i b, __m512i b_hi) {
    const __m512i lo32 = _mm512_set1_epi64(0xffffffff);
    __m512i a_hi = _mm512_srli_epi64(a, 32);
    __m512i ll = _mm512_mul_epu32(a, b), lh = _mm512_mul_epu32(a, b_hi);
    __m512i hl = _mm512_mul_epu32(a_hi, b), hh = _mm512_mul_epu32(a_hi, b_hi);
    __m512i mid = _mm512_add_epi64(_mm512_srli_epi64(ll, 32),
                                   _mm512_add_epi64(_mm512_and_si512(lh, lo32), _mm512_and_si512(hl, lo32)));
    __m512i hi = _mm512_add_epi64(hh, _mm512_add_epi64(_mm512_srli_epi64(lh, 32), _mm512_srli_epi64(hl, 32)));
    return _mm512_add_epi64(hi, _mm512_srli_epi64(mid, 32));
}

/* floor(a * b / 2**64) minus 0, 1 or 2: the exact sum less the carry out of
 * the low halves (ll's high half and the low halves of lh and hl, three
 * words below 2**32): one product and the carry arithmetic fewer, in the
 * transforms' inner loops. */
AVX512 static inline __m512i mulhi64_approx(__m512i a, __m512i b, __m512i b_hi) {
    __m512i a_hi = _mm512_srli_epi64(a, 32);
    __m512i lh = _mm512_mul_epu32(a, b_hi), hl = _mm512_mul_epu32(a_hi, b), hh = _mm512_mul_epu32(a_hi, b_hi);
    return _mm512_add_epi64(hh, _mm512_add_epi64(_mm512_srli_epi64(lh, 32), _mm512_srli_epi64(hl, 32)));
}

/* x - m if x >= m, else x: x - m wraps above x exactly when x < m. */
AVX512 static inline __m512i vreduce(__m512i x, __m512i m) {
    return _mm512_min_epu64(x, _mm512_sub_epi64(x, m));
}

AVX512 static inline __m512i vmul_shoup_lazy(__m512i x, __m512i w, __m512i wq, __m512i wq_hi, __m512i q) {
    __m512i hi = mulhi64(x, wq, wq_hi);
    return _mm512_sub_epi64(_mm512_mullo_epi64(x, w), _mm512_mullo_epi64(hi, q));
}

/* A word below 4q congruent to x * w, for any 64-bit x: the approximate
 * high product adds at most 2q to mul_shoup_lazy's [0, 2q). */
AVX512 static inline __m512i vmul_shoup_loose(__m512i x, __m512i w, __m512i wq, __m512i wq_hi, __m512i q) {
    __m512i hi = mulhi64_approx(x, wq, wq_hi);
    return _mm512_sub_epi64(_mm512_mullo_epi64(x, w), _mm512_mullo_epi64(hi, q));
}

/* The vector butterflies keep every word below 8q (< 2**64 for q < 2**61)
 * and x brought below 4q: with v = y * w below 4q, x + v and x - v + 4q are
 * below 8q again (forward), and x + y < 8q comes back below 4q with y's
 * product below 4q (inverse, whose words all stay below 4q). */
AVX512 static inline void vfwd(__m512i *x, __m512i *y, __m512i w, __m512i wq, __m512i q, __m512i q4) {
    __m512i u = vreduce(*x, q4), v = vmul_shoup_loose(*y, w, wq, _mm512_srli_epi64(wq, 32), q);
    *x = _mm512_add_epi64(u, v);
    *y = _mm512_sub_epi64(_mm512_add_epi64(u, q4), v);
}

AVX512 static inline void vinv(__m512i *x, __m512i *y, __m512i w, __m512i wq, __m512i q, __m512i q4) {
    __m512i u = *x, v = *y;
    *x = vreduce(_mm512_add_epi64(u, v), q4);
    *y = vmul_shoup_loose(_mm512_sub_epi64(_mm512_add_epi64(u, q4), v), w, wq, _mm512_srli_epi64(wq, 32), q);
}

/* [0, 8q) to [0, q). */
AVX512 static inline __m512i vcanon8(__m512i x, __m512i q) {
    __m512i q2 = _mm512_add_epi64(q, q);
    return vreduce(vreduce(vreduce(x, _mm512_add_epi64(q2, q2)), q2), q);
}

/* Lane indices for the layers with gap g < 8, where one group's x and y
 * share a vector. Sixteen words (two vectors a, b) hold 8/g groups; take[]
 * gathers their x halves (first vector) and y halves (second) out of a:b,
 * give[] puts them back, and root[] maps lane l to its group l / g. */
typedef struct {
    __m512i take_x, take_y, give_a, give_b, root;
    __mmask8 load;
} small_gap;

AVX512 static small_gap small_gap_of(size_t g) {
    uint64_t tx[8], ty[8], ga[8], gb[8], r[8], pos[16];
    for (size_t l = 0; l < 8; l++) {
        size_t base = (l / g) * 2 * g + l % g;
        tx[l] = base, ty[l] = base + g, r[l] = l / g;
        pos[base] = l, pos[base + g] = 8 + l;
    }
    for (size_t e = 0; e < 8; e++) ga[e] = pos[e], gb[e] = pos[8 + e];
    small_gap s = {_mm512_loadu_si512(tx), _mm512_loadu_si512(ty), _mm512_loadu_si512(ga), _mm512_loadu_si512(gb),
                   _mm512_loadu_si512(r), (__mmask8)((1u << (8 / g)) - 1)};
    return s;
}

/* One layer of gap g < 8 over words [lo, hi) (a multiple of 16 apart),
 * roots[first + i] for group i. */
AVX512 static inline void small_layer(uint64_t *a, size_t lo, size_t hi, size_t g, const small_gap *s,
                                      const uint64_t *roots, const uint64_t *roots_shoup, size_t first, __m512i q,
                                      __m512i q4, int inverse, int last) {
    for (size_t off = lo; off < hi; off += 16) {
        __m512i va = _mm512_loadu_si512(a + off), vb = _mm512_loadu_si512(a + off + 8);
        __m512i x = _mm512_permutex2var_epi64(va, s->take_x, vb), y = _mm512_permutex2var_epi64(va, s->take_y, vb);
        /* This block's 8/g roots; a masked load, as at small N the eight words
         * from r on can run past the table's end. */
        size_t r = first + off / (2 * g);
        __m512i w = _mm512_permutexvar_epi64(s->root, _mm512_maskz_loadu_epi64(s->load, roots + r));
        __m512i wq = _mm512_permutexvar_epi64(s->root, _mm512_maskz_loadu_epi64(s->load, roots_shoup + r));
        if (inverse) {
            vinv(&x, &y, w, wq, q, q4);
        } else {
            vfwd(&x, &y, w, wq, q, q4);
            if (last) {
                x = vcanon8(x, q);
                y = vcanon8(y, q);
            }
        }
        _mm512_storeu_si512(a + off, _mm512_permutex2var_epi64(x, s->give_a, y));
        _mm512_storeu_si512(a + off + 8, _mm512_permutex2var_epi64(x, s->give_b, y));
    }
}

/* One layer of gap g >= 8 over the groups in words [lo, hi). */
AVX512 static inline void big_layer(uint64_t *a, size_t lo, size_t hi, size_t g, const uint64_t *roots,
                                    const uint64_t *roots_shoup, size_t first, __m512i q, __m512i q4, int inverse) {
    for (size_t off = lo; off < hi; off += 2 * g) {
        size_t r = first + off / (2 * g);
        __m512i w = _mm512_set1_epi64((long long)roots[r]), wq = _mm512_set1_epi64((long long)roots_shoup[r]);
        uint64_t *x = a + off, *y = x + g;
        for (size_t j = 0; j < g; j += 8) {
            __m512i vx = _mm512_loadu_si512(x + j), vy = _mm512_loadu_si512(y + j);
            if (inverse) vinv(&vx, &vy, w, wq, q, q4);
            else vfwd(&vx, &vy, w, wq, q, q4);
            _mm512_storeu_si512(x + j, vx);
            _mm512_storeu_si512(y + j, vy);
        }
    }
}

/* Words per cache block: a layer whose groups fit in one runs block by
 * block through all such layers, so those layers read the level-1 cache
 * instead of each streaming the whole array (64 KiB at N = 8192) from L2. */
#define NTT_BLOCK ((size_t)2048)

/* As ntt_forward_scalar, for inputs below 8q. */
AVX512 static void ntt_forward_avx512(uint64_t *a, const pprm_ntt_table *t) {
    const __m512i q = _mm512_set1_epi64((long long)t->q), q4 = _mm512_slli_epi64(q, 2);
    size_t n = t->n, block = n < NTT_BLOCK ? n : NTT_BLOCK, gap = n >> 1, m = 1;
    small_gap sg[3] = {small_gap_of(1), small_gap_of(2), small_gap_of(4)};
    /* Layer m (m groups of 2 * gap words) uses roots m, m + 1, ... */
    for (; 2 * gap > block; m <<= 1, gap >>= 1)
        big_layer(a, 0, n, gap, t->roots, t->roots_shoup, m, q, q4, 0);
    for (size_t lo = 0; lo < n; lo += block) {
        size_t g = gap, mm = m;
        for (; g >= 8; mm <<= 1, g >>= 1)
            big_layer(a, lo, lo + block, g, t->roots, t->roots_shoup, mm, q, q4, 0);
        for (; g >= 1; mm <<= 1, g >>= 1)
            small_layer(a, lo, lo + block, g, &sg[__builtin_ctzll(g)], t->roots, t->roots_shoup, mm, q, q4, 0,
                        g == 1);
    }
}

/* As ntt_inverse_scalar, for inputs below 4q. */
AVX512 static void ntt_inverse_avx512(uint64_t *a, const pprm_ntt_table *t, const uint64_t *add) {
    const __m512i q = _mm512_set1_epi64((long long)t->q), q4 = _mm512_slli_epi64(q, 2);
    size_t n = t->n, block = n < NTT_BLOCK ? n : NTT_BLOCK, gap = 1, m = n >> 1;
    small_gap sg[3] = {small_gap_of(1), small_gap_of(2), small_gap_of(4)};
    /* Layer of m groups starts at inverse root n - 2m + 1 (SEAL's running
     * index). The last layer (m = 1) is left for the scaling below. */
    for (size_t lo = 0; lo < n; lo += block) {
        size_t g = 1, mm = n >> 1;
        for (; g < 8; mm >>= 1, g <<= 1)
            small_layer(a, lo, lo + block, g, &sg[__builtin_ctzll(g)], t->inv_roots, t->inv_roots_shoup,
                        n - 2 * mm + 1, q, q4, 1, 0);
        for (; 2 * g <= block && mm > 1; mm >>= 1, g <<= 1)
            big_layer(a, lo, lo + block, g, t->inv_roots, t->inv_roots_shoup, n - 2 * mm + 1, q, q4, 1);
        gap = g, m = mm;
    }
    for (; m > 1; m >>= 1, gap <<= 1)
        big_layer(a, 0, n, gap, t->inv_roots, t->inv_roots_shoup, n - 2 * m + 1, q, q4, 1);
    last_layer l = last_layer_of(t);
    __m512i ni = _mm512_set1_epi64((long long)l.inv_n), niq = _mm512_set1_epi64((long long)l.inv_n_shoup);
    __m512i lw = _mm512_set1_epi64((long long)l.w), lwq = _mm512_set1_epi64((long long)l.w_shoup);
    __m512i niq_hi = _mm512_srli_epi64(niq, 32), lwq_hi = _mm512_srli_epi64(lwq, 32);
    uint64_t *x = a, *y = a + gap;
    for (size_t j = 0; j < gap; j += 8) {
        __m512i u = _mm512_loadu_si512(x + j), v = _mm512_loadu_si512(y + j);
        __m512i vx = vcanon8(vmul_shoup_loose(_mm512_add_epi64(u, v), ni, niq, niq_hi, q), q);
        __m512i vy = vcanon8(vmul_shoup_loose(_mm512_sub_epi64(_mm512_add_epi64(u, q4), v), lw, lwq, lwq_hi, q), q);
        if (add) {
            vx = vreduce(_mm512_add_epi64(vx, _mm512_loadu_si512(add + j)), q);
            vy = vreduce(_mm512_add_epi64(vy, _mm512_loadu_si512(add + gap + j)), q);
        }
        _mm512_storeu_si512(x + j, vx);
        _mm512_storeu_si512(y + j, vy);
    }
}

/* The elementwise loops that multiply 64-bit words (gcc does not vectorise
 * a 64x64-bit high product). */

/* a * b as (hi, lo), both 64-bit lanes. */
AVX512 static inline __m512i vmul_wide(__m512i a, __m512i b, __m512i *hi) {
    *hi = mulhi64(a, b, _mm512_srli_epi64(b, 32));
    return _mm512_mullo_epi64(a, b);
}

AVX512 static void mul_lazy_avx512(uint64_t *dst, const uint64_t *a, const uint64_t *w, const uint64_t *wq, size_t n,
                                   uint64_t q) {
    const __m512i vq = _mm512_set1_epi64((long long)q);
    for (size_t j = 0; j < n; j += 8) {
        __m512i vwq = _mm512_loadu_si512(wq + j);
        _mm512_storeu_si512(dst + j, vmul_shoup_lazy(_mm512_loadu_si512(a + j), _mm512_loadu_si512(w + j), vwq,
                                                     _mm512_srli_epi64(vwq, 32), vq));
    }
}

AVX512 static void key_switch_avx512(uint64_t *dst, int accumulate, const uint64_t *g1, const uint64_t *kq,
                                     const uint64_t *kq_s, const uint64_t *t_q, uint64_t p_inv, uint64_t p_inv_shoup,
                                     size_t n, uint64_t q) {
    const __m512i vq = _mm512_set1_epi64((long long)q);
    const __m512i pi = _mm512_set1_epi64((long long)p_inv), piq = _mm512_set1_epi64((long long)p_inv_shoup);
    const __m512i piq_hi = _mm512_srli_epi64(piq, 32);
    for (size_t j = 0; j < n; j += 8) {
        __m512i wq = _mm512_loadu_si512(kq_s + j);
        __m512i prod = vmul_shoup_lazy(_mm512_loadu_si512(g1 + j), _mm512_loadu_si512(kq + j), wq,
                                       _mm512_srli_epi64(wq, 32), vq);
        __m512i d = _mm512_sub_epi64(_mm512_add_epi64(prod, vq), _mm512_loadu_si512(t_q + j));
        __m512i ks = vreduce(vmul_shoup_lazy(d, pi, piq, piq_hi, vq), vq);
        if (accumulate) ks = vreduce(_mm512_add_epi64(ks, _mm512_loadu_si512(dst + j)), vq);
        _mm512_storeu_si512(dst + j, ks);
    }
}

/* out = (z0 * A + g0 * B, z1 * A + g1 * B) mod q. Each sum x is below
 * 2q**2 < 2**(2k+1), q having k bits. Barrett with mu = floor(2**(2k+1) / q)
 * < 2**(k+2) on x1 = floor(x / 2**(k-1)) < 2**(k+2) <= 2**63: the estimate
 * floor(x1 * mu / 2**(k+2)) falls short of x / q by less than
 * x / 2**(2k+1) + 2**(k-1) / q + 1 < 3, so the remainder is below 3q. */
AVX512 static void pointwise_avx512(uint64_t *out, const uint64_t *z0, const uint64_t *z1, const uint64_t *g0,
                                    const uint64_t *g1, const uint64_t *A, const uint64_t *B, size_t n, uint64_t q) {
    unsigned k = 64 - (unsigned)__builtin_clzll(q);
    uint64_t mu = (uint64_t)(((u128)1 << (2 * k + 1)) / q);
    const __m512i vq = _mm512_set1_epi64((long long)q), q2 = _mm512_add_epi64(vq, vq);
    const __m512i vmu = _mm512_set1_epi64((long long)mu), vmu_hi = _mm512_srli_epi64(vmu, 32);
    const __m512i one = _mm512_set1_epi64(1);
    const __m128i s_hi1 = _mm_cvtsi32_si128((int)(65 - k)), s_lo1 = _mm_cvtsi32_si128((int)(k - 1));
    const __m128i s_hi2 = _mm_cvtsi32_si128((int)(62 - k)), s_lo2 = _mm_cvtsi32_si128((int)(k + 2));
    for (int half = 0; half < 2; half++) {
        const uint64_t *z = half ? z1 : z0, *g = half ? g1 : g0;
        uint64_t *o = out + (size_t)half * n;
        for (size_t j = 0; j < n; j += 8) {
            __m512i a = _mm512_loadu_si512(A + j), b = _mm512_loadu_si512(B + j), h1, h2;
            __m512i l1 = vmul_wide(_mm512_loadu_si512(z + j), a, &h1);
            __m512i l2 = vmul_wide(_mm512_loadu_si512(g + j), b, &h2);
            __m512i lo = _mm512_add_epi64(l1, l2);
            __m512i hi = _mm512_add_epi64(h1, h2);
            hi = _mm512_mask_add_epi64(hi, _mm512_cmplt_epu64_mask(lo, l1), hi, one);
            __m512i x1 = _mm512_or_si512(_mm512_sll_epi64(hi, s_hi1), _mm512_srl_epi64(lo, s_lo1));
            __m512i ph = mulhi64(x1, vmu, vmu_hi), pl = _mm512_mullo_epi64(x1, vmu);
            __m512i est = _mm512_or_si512(_mm512_sll_epi64(ph, s_hi2), _mm512_srl_epi64(pl, s_lo2));
            __m512i r = _mm512_sub_epi64(lo, _mm512_mullo_epi64(est, vq));
            _mm512_storeu_si512(o + j, vreduce(vreduce(r, q2), vq));
        }
    }
}

static int use_avx512(size_t n) {
    static int have = -1; /* callers may run in threads: the flag is only ever set to one value */
    int h = __atomic_load_n(&have, __ATOMIC_RELAXED);
    if (h < 0) {
        h = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
        __atomic_store_n(&have, h, __ATOMIC_RELAXED);
    }
    return h && n >= 16;
}
#endif

static void ntt_forward(uint64_t *a, const pprm_ntt_table *t) {
#if PPRM_MASK_AVX512
    if (use_avx512(t->n)) {
        ntt_forward_avx512(a, t);
        return;
    }
#endif
    ntt_forward_scalar(a, t);
}

static void ntt_inverse(uint64_t *a, const pprm_ntt_table *t, const uint64_t *add) {
#if PPRM_MASK_AVX512
    if (use_avx512(t->n)) {
        ntt_inverse_avx512(a, t, add);
        return;
    }
#endif
    ntt_inverse_scalar(a, t, add);
}

/* The light elementwise loops: plain C that the compiler vectorises, built
 * for AVX-512, AVX2 and the baseline and picked at load time. target_clones
 * needs GCC and glibc's ifunc; elsewhere only the baseline is built. */
#if PPRM_MASK_AVX512 && !defined(__clang__) && defined(__GLIBC__)
#define PPRM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PPRM_CLONES
#endif

/* Whether any a[j] >= q, without an early exit so that it vectorises. */
PPRM_CLONES static int any_unreduced(const uint64_t *a, size_t n, uint64_t q) {
    uint64_t bad = 0;
    for (size_t j = 0; j < n; j++) bad |= a[j] >= q;
    return bad != 0;
}

int pprm_ntt(uint64_t *a, const pprm_ntt_table *t, int inverse) {
    if (t->q < 2 || t->q >= (UINT64_C(1) << 61) || t->n < 2 || (t->n & (t->n - 1)))
        return PPRM_MASK_EINVAL;
    if (any_unreduced(a, t->n, t->q)) return PPRM_MASK_EINVAL;
    if (inverse) ntt_inverse(a, t, NULL);
    else ntt_forward(a, t);
    return PPRM_MASK_OK;
}

PPRM_CLONES static int any_outside(const int64_t *a, size_t n, int64_t bound) {
    uint64_t bad = 0;
    for (size_t j = 0; j < n; j++) bad |= (a[j] <= -bound) | (a[j] >= bound);
    return bad != 0;
}

PPRM_CLONES static int any_index_outside(const uint32_t *a, size_t n) {
    uint32_t bad = 0;
    for (size_t j = 0; j < n; j++) bad |= a[j] >= n;
    return bad != 0;
}

PPRM_CLONES static void sub_arr(uint64_t *dst, const uint64_t *a, const uint64_t *b, size_t n, uint64_t q) {
    for (size_t j = 0; j < n; j++) dst[j] = sub_mod(a[j], b[j], q);
}

/* Reduce centred integer coefficients with |v| < q into [0, q). */
PPRM_CLONES static void from_signed(uint64_t *dst, const int64_t *v, size_t n, uint64_t q) {
    for (size_t j = 0; j < n; j++) dst[j] = (uint64_t)v[j] + (q & (uint64_t)(v[j] >> 63));
}

PPRM_CLONES static void gather(uint64_t *d0, uint64_t *d1, uint64_t *d2, const uint64_t *c0, const uint64_t *c1,
                               const uint32_t *perm, size_t n) {
    for (size_t j = 0; j < n; j++) {
        d0[j] = c0[perm[j]];
        d1[j] = d2[j] = c1[perm[j]];
    }
}

/* a mod P for a in [0, q0). */
PPRM_CLONES static void to_prime(uint64_t *a, size_t n, uint64_t P, int one_step) {
    if (one_step)
        for (size_t j = 0; j < n; j++) a[j] = reduce_once(a[j], P);
    else
        for (size_t j = 0; j < n; j++) a[j] %= P;
}

/* a in [0, P) rounded to q0: (a + P/2 mod P) mod q0, minus P/2 mod q0 (fix). */
PPRM_CLONES static void round_to_q0(uint64_t *a, size_t n, uint64_t P, uint64_t q0, uint64_t fix, int one_step) {
    uint64_t half = P >> 1;
    if (one_step)
        for (size_t j = 0; j < n; j++) a[j] = add_mod(reduce_once(add_mod(a[j], half, P), q0), fix, q0);
    else
        for (size_t j = 0; j < n; j++) a[j] = add_mod(add_mod(a[j], half, P) % q0, fix, q0);
}

/* dst = a * w, below 2q (lazy Shoup). */
static void mul_lazy(uint64_t *dst, const uint64_t *a, const uint64_t *w, const uint64_t *wq, size_t n, uint64_t q) {
#if PPRM_MASK_AVX512
    if (use_avx512(n)) {
        mul_lazy_avx512(dst, a, w, wq, n, q);
        return;
    }
#endif
    for (size_t j = 0; j < n; j++) dst[j] = mul_shoup_lazy(a[j], w[j], wq[j], q);
}

/* The transforms and products for the other native sources (pprm_galois.c);
 * not part of the cffi interface. */
void pprm_ntt_forward_lazy(uint64_t *a, const pprm_ntt_table *t) { ntt_forward(a, t); }

int pprm_any_unreduced(const uint64_t *a, size_t n, uint64_t q) { return any_unreduced(a, n, q); }

void pprm_ntt_inverse_lazy(uint64_t *a, const pprm_ntt_table *t) { ntt_inverse(a, t, NULL); }

void pprm_mul_lazy(uint64_t *dst, const uint64_t *a, const uint64_t *w, const uint64_t *wq, size_t n, uint64_t q) {
    mul_lazy(dst, a, w, wq, n, q);
}

#if PPRM_MASK_AVX512
AVX512 static void mul_const_avx512(uint64_t *dst, const uint64_t *a, uint64_t w, uint64_t wq, size_t n, uint64_t q) {
    const __m512i vq = _mm512_set1_epi64((long long)q), vw = _mm512_set1_epi64((long long)w);
    const __m512i vwq = _mm512_set1_epi64((long long)wq), vwq_hi = _mm512_srli_epi64(vwq, 32);
    for (size_t j = 0; j < n; j += 8)
        _mm512_storeu_si512(dst + j, vreduce(vmul_shoup_lazy(_mm512_loadu_si512(a + j), vw, vwq, vwq_hi, vq), vq));
}
#endif

void pprm_mul_const(uint64_t *dst, const uint64_t *a, uint64_t w, uint64_t wq, size_t n, uint64_t q) {
#if PPRM_MASK_AVX512
    if (use_avx512(n)) {
        mul_const_avx512(dst, a, w, wq, n, q);
        return;
    }
#endif
    for (size_t j = 0; j < n; j++) dst[j] = mul_shoup(a[j], w, wq, q);
}

/* ((g1 * key at q0) - t_q) / P at q0, into dst or (accumulate) added to it.
 * The difference is below 3q0 (lazy product below 2q0), which Shoup takes
 * as it is. */
static void key_switch(uint64_t *dst, int accumulate, const uint64_t *g1, const uint64_t *kq, const uint64_t *kq_s,
                       const uint64_t *t_q, const pprm_mask_ctx *c) {
    size_t n = c->q0.n;
    uint64_t q0 = c->q0.q;
#if PPRM_MASK_AVX512
    if (use_avx512(n)) {
        key_switch_avx512(dst, accumulate, g1, kq, kq_s, t_q, c->p_inv, c->p_inv_shoup, n, q0);
        return;
    }
#endif
    for (size_t j = 0; j < n; j++) {
        uint64_t prod = mul_shoup_lazy(g1[j], kq[j], kq_s[j], q0);
        uint64_t ks = mul_shoup(prod + q0 - t_q[j], c->p_inv, c->p_inv_shoup, q0);
        dst[j] = accumulate ? add_mod(dst[j], ks, q0) : ks;
    }
}

/* out = (z0 * A + g0 * B, z1 * A + g1 * B) mod q0. */
static void pointwise(uint64_t *out, const uint64_t *z0, const uint64_t *z1, const uint64_t *g0, const uint64_t *g1,
                      const uint64_t *A, const uint64_t *B, const pprm_mask_ctx *c) {
    size_t n = c->q0.n;
    uint64_t q0 = c->q0.q;
#if PPRM_MASK_AVX512
    if (use_avx512(n)) {
        pointwise_avx512(out, z0, z1, g0, g1, A, B, n, q0);
        return;
    }
#endif
    /* Each output word is a sum of two products of residues, below 2q0**2,
     * which one Barrett reduction takes whole. */
    uint64_t r0 = c->q0_ratio[0], r1 = c->q0_ratio[1];
    for (size_t j = 0; j < n; j++) {
        out[j] = barrett_128((u128)z0[j] * A[j] + (u128)g0[j] * B[j], q0, r0, r1);
        out[n + j] = barrett_128((u128)z1[j] * A[j] + (u128)g1[j] * B[j], q0, r0, r1);
    }
}

/* conj = (perm(c0) + ks0, ks1) where (ks0, ks1) switches perm(c1) from the
 * conjugated key back to the secret key, as SEAL's switch_key_inplace does
 * for one data prime q0 and the special prime P. */
static void conjugate(const uint64_t *c0, const uint64_t *c1, const pprm_mask_ctx *c, uint64_t *g0, uint64_t *g1,
                      uint64_t *t_p, uint64_t *t_q) {
    size_t n = c->q0.n;
    uint64_t q0 = c->q0.q, P = c->p.q;
    gather(g0, g1, t_p, c0, c1, c->perm, n);
    /* The decomposition of g1: its coefficients in [0, q0), read mod P. */
    ntt_inverse(t_p, &c->q0, NULL);
    to_prime(t_p, n, P, q0 <= 2 * P);
    ntt_forward(t_p, &c->p);
    uint64_t fix = q0 - (P >> 1) % q0; /* subtracts P/2 again, mod q0 */
    for (int k = 0; k < 2; k++) {
        const uint64_t *kq = c->key + (size_t)k * 2 * n, *kp = kq + n;
        const uint64_t *kq_s = c->key_shoup + (size_t)k * 2 * n, *kp_s = kq_s + n;
        /* The product at P (lazy: the inverse transform takes words below
         * 2P), rounded (add P/2) and brought to q0 ... */
        mul_lazy(t_q, t_p, kp, kp_s, n, P);
        ntt_inverse(t_q, &c->p, NULL);
        round_to_q0(t_q, n, P, q0, fix, P <= 2 * q0);
        ntt_forward(t_q, &c->q0);
        /* ... and ((g1 * key at q0) - that) / P at q0: ks0 goes onto g0, ks1
         * replaces g1 (which ks1 itself is the last to read). */
        key_switch(k == 0 ? g0 : g1, k == 0, g1, kq, kq_s, t_q, c);
    }
}

int pprm_mask_complex(const uint64_t *ct, const uint64_t *tau, const int64_t *mask_a, const int64_t *mask_b,
                      const uint64_t *noise, const pprm_mask_ctx *c, uint64_t *out) {
    size_t n = c->q0.n;
    uint64_t q0 = c->q0.q;
    if (n != c->p.n || q0 < 2 || c->p.q < 2 || q0 >= (UINT64_C(1) << 61) || c->p.q >= (UINT64_C(1) << 61))
        return PPRM_MASK_EINVAL;
    int64_t bound = (int64_t)(q0 >> 1);
    if (any_unreduced(ct, 2 * n, q0) || any_unreduced(tau, n, q0) || any_unreduced(noise, n, q0) ||
        any_index_outside(c->perm, n) || any_outside(mask_a, n, bound) || any_outside(mask_b, n, bound))
        return PPRM_MASK_EINVAL;
    uint64_t *buf = malloc(7 * n * sizeof *buf);
    if (!buf) return PPRM_MASK_ENOMEM;
    uint64_t *z0 = buf, *g0 = buf + n, *g1 = buf + 2 * n, *A = buf + 3 * n, *B = buf + 4 * n;
    uint64_t *t_p = buf + 5 * n, *t_q = buf + 6 * n;
    sub_arr(z0, ct, tau, n, q0);
    const uint64_t *z1 = ct + n;
    conjugate(z0, z1, c, g0, g1, t_p, t_q);
    from_signed(A, mask_a, n, q0);
    from_signed(B, mask_b, n, q0);
    ntt_forward(A, &c->q0);
    ntt_forward(B, &c->q0);
    pointwise(out, z0, z1, g0, g1, A, B, c);
    ntt_inverse(out, &c->q0, noise);
    ntt_inverse(out + n, &c->q0, NULL);
    free(buf);
    return PPRM_MASK_OK;
}

int pprm_shoup(const uint64_t *w, uint64_t *out, size_t n, uint64_t q) {
    if (q < 2 || q >= (UINT64_C(1) << 61)) return PPRM_MASK_EINVAL;
    for (size_t j = 0; j < n; j++) {
        if (w[j] >= q) return PPRM_MASK_EINVAL;
        out[j] = (uint64_t)(((u128)w[j] << 64) / q);
    }
    return PPRM_MASK_OK;
}
