/*
 * Galois automorphisms of CKKS ciphertexts in the residue domain: SEAL's
 * Evaluator::apply_galois_inplace followed by switch_key_inplace, for a
 * ciphertext at any level of a parameter set with several data primes and
 * one special prime P (the blind profile's rotations and conjugations).
 *
 * With (c0, c1) in NTT form at the primes q_0 .. q_{l-1} and the element's
 * NTT-slot permutation pi, SEAL computes
 *
 *     g0 = pi(c0), g1 = pi(c1)
 *     for every output prime m in {q_0 .. q_{l-1}, P} and component k:
 *         acc_k[m] = sum_j d_j(g1) * key[j][k][m]          (NTT form at m)
 *     where d_j(g1) is g1's residue at q_j in coefficient form, read at m
 *     (at m = q_j itself: g1's NTT form as it is);
 *     then, dividing by P with rounding,
 *         out_k[i] = (acc_k[q_i] - NTT_i((INTT_P(acc_k[P]) + P/2) mod P mod q_i - P/2)) * P**-1
 *     and out0 += g0, out1 = that alone.
 *
 * Every step is exact arithmetic modulo one prime, and each step's output is
 * brought to its unique residue in [0, q) (the transforms of pprm_mask.c end
 * canonical whatever their lazy intermediate words), so the result is bit for
 * bit SEAL's; tests/matching/test_galois_native.py checks it against
 * rotate_vector and complex_conjugate. The only place where a representative
 * matters, the rounding division by P, reads INTT_P(acc_k[P]) canonical in
 * [0, P), as SEAL does.
 *
 * Bounds: every prime is below 2**61 (the transforms' lazy bounds need 4q <
 * 2**63) and, as SEAL's own parameter sets of equal-size primes give, any
 * two primes are within a factor of two of each other, so a residue at one
 * prime is below four times any other and the forward transform takes it as
 * it is; pprm_apply_galois refuses other key contexts.
 *
 * SEAL refuses a result whose second component is zero (a "transparent"
 * ciphertext, which only a degenerate key can give); so does this, with
 * PPRM_GALOIS_TRANSPARENT.
 *
 * No threads: one call is 20 transforms at three primes, 2.2-2.5 ms at
 * N = 16384 on the 2-core Xeon VM; the caller runs independent chains of rotations
 * side by side instead (cffi releases the GIL).
 */
#include "pprm_galois.h"

#include <stdlib.h>
#include <string.h>

static inline uint64_t reduce_once(uint64_t r, uint64_t q) {
    uint64_t d = r - q;
    return d + (q & (uint64_t)-(int64_t)(d >> 63));
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__)
#define PPRM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PPRM_CLONES
#endif

PPRM_CLONES static int all_zero(const uint64_t *a, size_t n) {
    uint64_t any = 0;
    for (size_t j = 0; j < n; j++) any |= a[j];
    return any == 0;
}

static void permute(uint64_t *dst, const uint64_t *src, const uint32_t *perm, size_t n) {
    for (size_t j = 0; j < n; j++) dst[j] = src[perm[j]];
}

/* acc = (acc + x) mod q for acc < q, x < 2q. */
PPRM_CLONES static void add_lazy_into(uint64_t *acc, const uint64_t *x, size_t n, uint64_t q) {
    for (size_t j = 0; j < n; j++) acc[j] = reduce_once(reduce_once(acc[j] + x[j], q), q);
}

/* (a + P/2) mod P, for a in [0, P). */
PPRM_CLONES static void add_half(uint64_t *a, size_t n, uint64_t P) {
    uint64_t half = P >> 1;
    for (size_t j = 0; j < n; j++) a[j] = reduce_once(a[j] + half, P);
}

/* dst = a mod q plus fix, below 2q: a < P < 2q, fix < q. */
PPRM_CLONES static void to_prime_plus(uint64_t *dst, const uint64_t *a, size_t n, uint64_t q, uint64_t fix) {
    for (size_t j = 0; j < n; j++) dst[j] = reduce_once(a[j], q) + fix;
}

/* dst = acc + q - t, below 2q: acc < q, t < q. */
PPRM_CLONES static void sub_lazy(uint64_t *dst, const uint64_t *acc, const uint64_t *t, size_t n, uint64_t q) {
    for (size_t j = 0; j < n; j++) dst[j] = acc[j] + q - t[j];
}

PPRM_CLONES static void add_into(uint64_t *dst, const uint64_t *a, size_t n, uint64_t q) {
    for (size_t j = 0; j < n; j++) dst[j] = reduce_once(dst[j] + a[j], q);
}

static int key_fits(const pprm_galois_key *k) {
    if (k->digits < 1 || k->n < 16 || (k->n & (k->n - 1))) return 0;
    for (size_t i = 0; i <= k->digits; i++) {
        uint64_t q = k->tables[i].q;
        if (k->tables[i].n != k->n || q < 2 || q >= (UINT64_C(1) << 61)) return 0;
        for (size_t m = 0; m <= k->digits; m++)
            if (k->tables[m].q >= 2 * q) return 0; /* residues must stay below 2q at every other prime */
    }
    return 1;
}

int pprm_apply_galois(const uint64_t *ct, size_t level, const pprm_galois_key *k, uint64_t *out) {
    const size_t n = k->n, L = k->digits;
    if (level < 1 || level > L || !key_fits(k)) return PPRM_GALOIS_EINVAL;
    for (size_t c = 0; c < 2; c++)
        for (size_t i = 0; i < level; i++)
            if (pprm_any_unreduced(ct + (c * level + i) * n, n, k->tables[i].q)) return PPRM_GALOIS_EINVAL;
    /* g1 in NTT form and in coefficient form (level rows each), an
     * accumulator per component and output prime (2 x (level + 1) rows), a
     * digit read at another prime, and a product. */
    const size_t rows = 2 * level + 2 * (level + 1) + 2;
    uint64_t *buf = malloc(rows * n * sizeof *buf);
    if (!buf) return PPRM_GALOIS_ENOMEM;
    uint64_t *g1 = buf, *coef = g1 + level * n, *acc = coef + level * n;
    uint64_t *digit = acc + 2 * (level + 1) * n, *prod = digit + n;
    for (size_t i = 0; i < level; i++) {
        permute(out + i * n, ct + i * n, k->perm, n); /* g0 goes straight to out0 */
        permute(g1 + i * n, ct + (level + i) * n, k->perm, n);
        memcpy(coef + i * n, g1 + i * n, n * sizeof *coef);
        pprm_ntt_inverse_lazy(coef + i * n, &k->tables[i]);
    }
    memset(acc, 0, 2 * (level + 1) * n * sizeof *acc);
    /* Output row r = 0 .. level: the data primes q_0 .. q_{level-1}, then P
     * (the key's last prime, whatever the level). */
    for (size_t r = 0; r <= level; r++) {
        const size_t m = r == level ? L : r;
        const pprm_ntt_table *t = &k->tables[m];
        for (size_t j = 0; j < level; j++) {
            const uint64_t *d = g1 + j * n;
            if (m != j) { /* g1's residue at q_j, below 2q_m, read at q_m */
                memcpy(digit, coef + j * n, n * sizeof *digit);
                pprm_ntt_forward_lazy(digit, t);
                d = digit;
            }
            for (size_t c = 0; c < 2; c++) {
                const size_t at = ((j * 2 + c) * (L + 1) + m) * n;
                pprm_mul_lazy(prod, d, k->key + at, k->key_shoup + at, n, t->q);
                add_lazy_into(acc + (c * (level + 1) + r) * n, prod, n, t->q);
            }
        }
    }
    /* Divide by P with rounding, component by component. */
    const pprm_ntt_table *tp = &k->tables[L];
    const uint64_t P = tp->q;
    for (size_t c = 0; c < 2; c++) {
        uint64_t *last = acc + (c * (level + 1) + level) * n;
        pprm_ntt_inverse_lazy(last, tp);
        add_half(last, n, P);
        for (size_t i = 0; i < level; i++) {
            const uint64_t q = k->tables[i].q;
            const uint64_t fix = q - (P >> 1) % q; /* takes P/2 off again, mod q */
            to_prime_plus(digit, last, n, q, fix);
            pprm_ntt_forward_lazy(digit, &k->tables[i]);
            sub_lazy(prod, acc + (c * (level + 1) + i) * n, digit, n, q);
            uint64_t *dst = out + (c * level + i) * n;
            if (c == 0) {
                pprm_mul_const(prod, prod, k->p_inv[i], k->p_inv_shoup[i], n, q);
                add_into(dst, prod, n, q);
            } else {
                pprm_mul_const(dst, prod, k->p_inv[i], k->p_inv_shoup[i], n, q);
            }
        }
    }
    free(buf);
    for (size_t i = 0; i < level; i++)
        if (!all_zero(out + (level + i) * n, n)) return PPRM_GALOIS_OK;
    return PPRM_GALOIS_TRANSPARENT;
}
