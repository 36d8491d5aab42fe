/* The sealed profile's per-block masking in the residue domain (see pprm_mask.c). */
#ifndef PPRM_MASK_H
#define PPRM_MASK_H

#include <stddef.h>
#include <stdint.h>

#define PPRM_MASK_OK 0
#define PPRM_MASK_EINVAL 1 /* a modulus outside [2, 2**61), N not a power of two, or an input word not reduced */
#define PPRM_MASK_ENOMEM 2

/* One prime's negacyclic NTT tables, laid out as SEAL 4.x lays them out. */
typedef struct {
    uint64_t q;
    size_t n;
    const uint64_t *roots;           /* roots[bitrev(i)] = psi**i, psi the minimal primitive 2N-th root */
    const uint64_t *roots_shoup;     /* floor(roots[i] * 2**64 / q) */
    const uint64_t *inv_roots;       /* inv_roots[bitrev(i - 1) + 1] = psi**-i */
    const uint64_t *inv_roots_shoup;
    uint64_t inv_n, inv_n_shoup;     /* N**-1 mod q and its Shoup quotient */
} pprm_ntt_table;

/* Everything the masking of one block needs besides the block's own data. */
typedef struct {
    pprm_ntt_table q0, p;            /* the data prime and the special prime */
    uint64_t q0_ratio[2];            /* floor(2**128 / q0), low word first */
    const uint32_t *perm;            /* conjugation in NTT form: out[j] = in[perm[j]] */
    const uint64_t *key;             /* conjugation key, [2 components][q0, P][N], NTT form */
    const uint64_t *key_shoup;       /* Shoup quotients of key, same layout (each at its prime) */
    uint64_t p_inv, p_inv_shoup;     /* P**-1 mod q0 */
} pprm_mask_ctx;

int pprm_ntt(uint64_t *a, const pprm_ntt_table *t, int inverse);

/* out[j] = floor(w[j] * 2**64 / q), the Shoup quotients of w (all w[j] < q). */
int pprm_shoup(const uint64_t *w, uint64_t *out, size_t n, uint64_t q);

int pprm_mask_complex(const uint64_t *ct, const uint64_t *tau, const int64_t *mask_a, const int64_t *mask_b,
                      const uint64_t *noise, const pprm_mask_ctx *c, uint64_t *out);

/* For the other native sources, not the cffi interface. Outputs in [0, q). */
void pprm_ntt_forward_lazy(uint64_t *a, const pprm_ntt_table *t); /* inputs below 4q */
void pprm_ntt_inverse_lazy(uint64_t *a, const pprm_ntt_table *t); /* inputs below 2q */
/* Whether any a[j] >= q. */
int pprm_any_unreduced(const uint64_t *a, size_t n, uint64_t q);
/* dst = a * w (Shoup quotients wq), below 2q for any 64-bit a. */
void pprm_mul_lazy(uint64_t *dst, const uint64_t *a, const uint64_t *w, const uint64_t *wq, size_t n, uint64_t q);
/* dst = a * w mod q in [0, q), one constant w. */
void pprm_mul_const(uint64_t *dst, const uint64_t *a, uint64_t w, uint64_t wq, size_t n, uint64_t q);

#endif
