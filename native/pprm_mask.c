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
 */
#include "pprm_mask.h"

#include <stdlib.h>
#include <string.h>

typedef unsigned __int128 u128;

/* Branch-free: random residues make a branch on "r >= q" a coin toss for the
 * predictor, and these run in every butterfly. Valid for r < 2q, q < 2**62. */
static inline uint64_t reduce_once(uint64_t r, uint64_t q) {
    uint64_t d = r - q;
    return d + (q & (uint64_t)-(int64_t)(d >> 63));
}

/* x * w mod q with w's Shoup quotient wq = floor(w * 2**64 / q); q < 2**62. */
static inline uint64_t mul_shoup(uint64_t x, uint64_t w, uint64_t wq, uint64_t q) {
    uint64_t hi = (uint64_t)(((u128)x * wq) >> 64);
    return reduce_once(x * w - hi * q, q); /* x * w - hi * q is in [0, 2q) */
}

/* a * b mod q for a, b < q < 2**61, by Barrett reduction with
 * ratio = floor(2**128 / q) = r1 * 2**64 + r0 (SEAL's barrett_reduce_128). */
static inline uint64_t mul_mod(uint64_t a, uint64_t b, uint64_t q, uint64_t r0, uint64_t r1) {
    u128 p = (u128)a * b;
    uint64_t lo = (uint64_t)p, hi = (uint64_t)(p >> 64);
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

/* x mod q for x < 2q without a division, else with one. */
static inline uint64_t mod_small(uint64_t x, uint64_t q, int one_step) {
    return one_step ? reduce_once(x, q) : x % q;
}

/* Forward negacyclic NTT in place, SEAL's order: Cooley-Tukey layers, the
 * roots in bit-reversed order starting at index 1. Inputs and outputs in [0, q). */
static void ntt_forward(uint64_t *a, const pprm_ntt_table *t) {
    size_t n = t->n, gap = n >> 1, k = 0;
    for (size_t m = 1; m < n; m <<= 1) {
        size_t off = 0;
        for (size_t i = 0; i < m; i++) {
            ++k;
            uint64_t w = t->roots[k], wq = t->roots_shoup[k];
            uint64_t *x = a + off, *y = x + gap;
            for (size_t j = 0; j < gap; j++) {
                uint64_t u = x[j], v = mul_shoup(y[j], w, wq, t->q);
                x[j] = add_mod(u, v, t->q);
                y[j] = sub_mod(u, v, t->q);
            }
            off += gap << 1;
        }
        gap >>= 1;
    }
}

/* Inverse negacyclic NTT in place (Gentleman-Sande layers, SEAL's inverse
 * root order), scaled by 1/N. Inputs and outputs in [0, q). */
static void ntt_inverse(uint64_t *a, const pprm_ntt_table *t) {
    size_t n = t->n, gap = 1, k = 0;
    for (size_t m = n >> 1; m >= 1; m >>= 1) {
        size_t off = 0;
        for (size_t i = 0; i < m; i++) {
            ++k;
            uint64_t w = t->inv_roots[k], wq = t->inv_roots_shoup[k];
            uint64_t *x = a + off, *y = x + gap;
            for (size_t j = 0; j < gap; j++) {
                uint64_t u = x[j], v = y[j];
                x[j] = add_mod(u, v, t->q);
                y[j] = mul_shoup(sub_mod(u, v, t->q), w, wq, t->q);
            }
            off += gap << 1;
        }
        gap <<= 1;
    }
    for (size_t j = 0; j < n; j++)
        a[j] = mul_shoup(a[j], t->inv_n, t->inv_n_shoup, t->q);
}

int pprm_ntt(uint64_t *a, const pprm_ntt_table *t, int inverse) {
    if (t->q < 2 || t->q >= (UINT64_C(1) << 61) || t->n < 2 || (t->n & (t->n - 1)))
        return PPRM_MASK_EINVAL;
    for (size_t j = 0; j < t->n; j++)
        if (a[j] >= t->q) return PPRM_MASK_EINVAL;
    if (inverse) ntt_inverse(a, t);
    else ntt_forward(a, t);
    return PPRM_MASK_OK;
}

/* Reduce a centred integer coefficient with |v| < q into [0, q). */
static inline uint64_t from_signed(int64_t v, uint64_t q) {
    return (uint64_t)v + (q & (uint64_t)(v >> 63));
}

/* conj = (perm(c0) + ks0, ks1) where (ks0, ks1) switches perm(c1) from the
 * conjugated key back to the secret key, as SEAL's switch_key_inplace does
 * for one data prime q0 and the special prime P. */
static void conjugate(const uint64_t *c0, const uint64_t *c1, const pprm_mask_ctx *c, uint64_t *g0, uint64_t *g1,
                      uint64_t *t_p, uint64_t *t_q, uint64_t *acc) {
    size_t n = c->q0.n;
    uint64_t q0 = c->q0.q, P = c->p.q, half = P >> 1;
    for (size_t j = 0; j < n; j++) {
        g0[j] = c0[c->perm[j]];
        g1[j] = c1[c->perm[j]];
    }
    /* The decomposition of g1: its coefficients in [0, q0), read mod P. */
    memcpy(t_p, g1, n * sizeof *t_p);
    ntt_inverse(t_p, &c->q0);
    int p_one_step = q0 <= 2 * P, q_one_step = P <= 2 * q0;
    for (size_t j = 0; j < n; j++)
        t_p[j] = mod_small(t_p[j], P, p_one_step);
    ntt_forward(t_p, &c->p);
    uint64_t fix = q0 - half % q0; /* subtracts P/2 again, mod q0 */
    for (int k = 0; k < 2; k++) {
        const uint64_t *kq = c->key + (size_t)k * 2 * n, *kp = kq + n;
        const uint64_t *kq_s = c->key_shoup + (size_t)k * 2 * n, *kp_s = kq_s + n;
        /* The product at P, rounded (add P/2) and brought to q0 ... */
        for (size_t j = 0; j < n; j++)
            t_q[j] = mul_shoup(t_p[j], kp[j], kp_s[j], P);
        ntt_inverse(t_q, &c->p);
        for (size_t j = 0; j < n; j++)
            t_q[j] = add_mod(mod_small(add_mod(t_q[j], half, P), q0, q_one_step), fix, q0);
        ntt_forward(t_q, &c->q0);
        /* ... and ((g1 * key at q0) - that) / P at q0. */
        uint64_t *dst = k == 0 ? acc : g1;
        for (size_t j = 0; j < n; j++) {
            uint64_t prod = mul_shoup(g1[j], kq[j], kq_s[j], q0);
            dst[j] = mul_shoup(sub_mod(prod, t_q[j], q0), c->p_inv, c->p_inv_shoup, q0);
        }
    }
    for (size_t j = 0; j < n; j++)
        g0[j] = add_mod(g0[j], acc[j], q0);
}

int pprm_mask_complex(const uint64_t *ct, const uint64_t *tau, const int64_t *mask_a, const int64_t *mask_b,
                      const uint64_t *noise, const pprm_mask_ctx *c, uint64_t *out) {
    size_t n = c->q0.n;
    uint64_t q0 = c->q0.q;
    if (n != c->p.n || q0 < 2 || c->p.q < 2 || q0 >= (UINT64_C(1) << 61) || c->p.q >= (UINT64_C(1) << 61))
        return PPRM_MASK_EINVAL;
    for (size_t j = 0; j < 2 * n; j++)
        if (ct[j] >= q0) return PPRM_MASK_EINVAL;
    int64_t bound = (int64_t)(q0 >> 1);
    for (size_t j = 0; j < n; j++)
        if (tau[j] >= q0 || noise[j] >= q0 || c->perm[j] >= n || mask_a[j] <= -bound || mask_a[j] >= bound ||
            mask_b[j] <= -bound || mask_b[j] >= bound)
            return PPRM_MASK_EINVAL;
    uint64_t *buf = malloc(7 * n * sizeof *buf);
    if (!buf) return PPRM_MASK_ENOMEM;
    uint64_t *z0 = buf, *g0 = buf + n, *g1 = buf + 2 * n, *A = buf + 3 * n, *B = buf + 4 * n;
    uint64_t *t_p = buf + 5 * n, *t_q = buf + 6 * n;
    for (size_t j = 0; j < n; j++)
        z0[j] = sub_mod(ct[j], tau[j], q0);
    const uint64_t *z1 = ct + n;
    /* acc reuses A's space: A is filled only after the conjugation. */
    conjugate(z0, z1, c, g0, g1, t_p, t_q, A);
    for (size_t j = 0; j < n; j++) {
        A[j] = from_signed(mask_a[j], q0);
        B[j] = from_signed(mask_b[j], q0);
    }
    ntt_forward(A, &c->q0);
    ntt_forward(B, &c->q0);
    uint64_t r0 = c->q0_ratio[0], r1 = c->q0_ratio[1];
    uint64_t *o0 = out, *o1 = out + n;
    for (size_t j = 0; j < n; j++) {
        o0[j] = add_mod(mul_mod(z0[j], A[j], q0, r0, r1), mul_mod(g0[j], B[j], q0, r0, r1), q0);
        o1[j] = add_mod(mul_mod(z1[j], A[j], q0, r0, r1), mul_mod(g1[j], B[j], q0, r0, r1), q0);
    }
    ntt_inverse(o0, &c->q0);
    ntt_inverse(o1, &c->q0);
    for (size_t j = 0; j < n; j++)
        o0[j] = add_mod(o0[j], noise[j], q0);
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
