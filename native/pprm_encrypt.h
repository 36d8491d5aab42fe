/* Symmetric CKKS encryption of a sealed gallery block at one data prime (see pprm_encrypt.c). */
#ifndef PPRM_ENCRYPT_H
#define PPRM_ENCRYPT_H

#include <stddef.h>
#include <stdint.h>

#include "pprm_mask.h" /* pprm_ntt_table, pprm_ntt */

#define PPRM_ENC_OK 0
#define PPRM_ENC_EINVAL 1 /* bad table, a key word not reduced, or a plaintext coefficient with |m| >= q */
#define PPRM_ENC_ENOMEM 2
#define PPRM_ENC_EAGAIN 3 /* the pool of random words ran out before every c1 coefficient was accepted */

/* Bytes of randomness one noise coefficient takes (SEAL's sample_poly_cbd). */
#define PPRM_ENC_NOISE_BYTES 6

/* Encrypt `rows` plaintexts under the secret key s, SEAL's encrypt_symmetric in NTT form:
 *
 *     c1 = a                     uniform mod q, taken in NTT form from `pool`
 *     c0 = NTT(m - e) - a * s    = -(a*s + NTT(e)) + NTT(m)
 *
 * m:          int64[rows][N] plaintext coefficients, |m| < q.
 * pool:       pool_words random 64-bit words (from the OS CSPRNG); each is
 *             masked to bitlen(q) bits and accepted when below q.
 * noise:      uint8[rows][N][6] random bytes; each 6 give one CBD coefficient.
 * s:          uint64[N] the secret key's NTT residues at q, all < q.
 * t:          the NTT tables of q (t->n = N).
 * out:        uint64[rows][2][N]: c0 then c1 for each row.
 * threads:    pthreads over rows; <= 0 means all online cores.
 *
 * Returns PPRM_ENC_OK, or an error code (out is then unspecified). The
 * function draws no randomness of its own. */
int pprm_encrypt_block(const int64_t *m, const uint64_t *pool, size_t pool_words, const uint8_t *noise,
                       const uint64_t *s, const pprm_ntt_table *t, uint64_t *out, size_t rows, int threads);

/* Decrypt `rows` ciphertexts under s: m = INTT(c0 + c1 * s), each
 * coefficient centred into (-q/2, q/2], as SEAL's Decryptor computes it.
 *
 * ct:     uint64[rows][2][N] in NTT form at q, all words < q.
 * out:    int64[rows][N] the plaintext coefficients.
 *
 * Returns PPRM_ENC_OK, or PPRM_ENC_EINVAL (a word not reduced: out is not
 * written) or PPRM_ENC_ENOMEM. */
int pprm_decrypt_block(const uint64_t *ct, const uint64_t *s, const pprm_ntt_table *t, int64_t *out, size_t rows,
                       int threads);

#endif
