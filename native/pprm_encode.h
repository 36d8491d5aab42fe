/* Exact CKKS encoding in x87 long double, bit for bit pprm/crypto/encoding.py (see pprm_encode.c). */
#ifndef PPRM_ENCODE_H
#define PPRM_ENCODE_H

#include <stddef.h>
#include <stdint.h>

#define PPRM_ENCODE_OK 0
/* N not a power of two >= 2, m > N/2, a modulus outside [2, 2**62), a place outside [0, N), or a
 * platform whose long double is not x87's 80-bit format (anything but x86-64) */
#define PPRM_ENCODE_EINVAL 1
#define PPRM_ENCODE_ENOMEM 2
#define PPRM_ENCODE_ERANGE 3 /* a scaled coefficient is not finite (non-finite values, or a scale that overflows) */

/* Encode k vectors of m <= N/2 complex slot values and reduce them modulo each prime:
 *
 *     out[v][l] = rint(2**scale_bits * m_v) mod moduli[l]
 *
 * with m_v the message polynomial of values[v] (missing slots zero), computed
 * exactly as encode_coefficients and coefficients_to_residues compute it.
 *
 * values:     double[k][m][2], complex128 (real, imaginary).
 * place:      uint32[2][N/2]: where slot j, then its conjugate, sits in the
 *             bit-reversed input of the length-N DFT (rev[pos[j]], rev[neg[j]]).
 * stages:     long double[N - 1][2]: the radix-2 twiddles of every stage, the
 *             stage of half-size h at offset h - 1 (encoding._plan's list, concatenated).
 * twist:      long double[N][2]: zeta**-k (encoding._plan's twist).
 * moduli:     the nprimes primes, each in [2, 2**62).
 * out:        uint64[k][nprimes][N], residues in [0, q).
 *
 * Returns PPRM_ENCODE_OK or an error code (out is then unspecified). Writes
 * no global state: calls on different threads run in parallel. */
int pprm_encode_residues(const double *values, size_t k, size_t m, int scale_bits, const uint32_t *place,
                         const long double *stages, const long double *twist, const uint64_t *moduli,
                         size_t nprimes, size_t n, uint64_t *out);

#endif
