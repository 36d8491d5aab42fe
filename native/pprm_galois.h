/* Galois automorphisms with SEAL's hybrid key switching over several primes (see pprm_galois.c). */
#ifndef PPRM_GALOIS_H
#define PPRM_GALOIS_H

#include <stddef.h>
#include <stdint.h>

#include "pprm_mask.h" /* pprm_ntt_table */

#define PPRM_GALOIS_OK 0
#define PPRM_GALOIS_EINVAL 1      /* a level outside [1, digits], or an input word not reduced */
#define PPRM_GALOIS_ENOMEM 2
#define PPRM_GALOIS_TRANSPARENT 3 /* the result's second component is zero (SEAL refuses it too) */

/* One Galois element's switching key, as SEAL stores it, with its tables. */
typedef struct {
    size_t n;
    size_t digits;                /* data primes at the key level: one key ciphertext per prime */
    const pprm_ntt_table *tables; /* digits + 1 tables: the data primes, then the special prime P */
    const uint32_t *perm;         /* the element on NTT slots: out[j] = in[perm[j]] */
    const uint64_t *key;          /* [digits][2][digits + 1][N], NTT form */
    const uint64_t *key_shoup;    /* Shoup quotients of key, each at its prime */
    const uint64_t *p_inv;        /* [digits]: P**-1 mod q_i */
    const uint64_t *p_inv_shoup;  /* their Shoup quotients */
} pprm_galois_key;

/* out = the automorphism of ct, switched back to the secret key.
   ct and out: uint64[2][level][N], NTT form at the first `level` data primes;
   out must not overlap ct. */
int pprm_apply_galois(const uint64_t *ct, size_t level, const pprm_galois_key *k, uint64_t *out);

#endif
