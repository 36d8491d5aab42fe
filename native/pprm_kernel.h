/* Exact multiply-accumulates over RNS residues (see pprm_kernel.c). */
#ifndef PPRM_KERNEL_H
#define PPRM_KERNEL_H

#include <stddef.h>
#include <stdint.h>

/* Return codes of pprm_mac_sealed and pprm_mac_plain. */
#define PPRM_OK 0
#define PPRM_EINVAL 1 /* sealed: a modulus is 0 or >= 2**60, a weight exceeds 2**16, or d > 2**16;
                         plain: a modulus is outside [2, 2**60), b > 256, or an input word is >= its modulus */
#define PPRM_ENOMEM 2 /* the thread table or the accumulators could not be allocated */

int pprm_mac_sealed(const uint64_t *block, const int64_t *weights, const uint64_t *moduli,
                    uint64_t *out, size_t d, size_t rows, size_t n, int threads);

int pprm_mac_plain(const uint64_t *pts, const uint64_t *cts, const uint64_t *moduli, uint64_t *out,
                   size_t g, size_t b, size_t s, size_t l, size_t n, int threads);

/* For tests and measurements: pprm_mac_plain always on its portable scalar loop,
   the reference that the AVX-512 path must match bit for bit; and whether
   pprm_mac_plain takes the AVX-512 path on this CPU (1) or the scalar one (0). */
int pprm_mac_plain_scalar(const uint64_t *pts, const uint64_t *cts, const uint64_t *moduli, uint64_t *out,
                          size_t g, size_t b, size_t s, size_t l, size_t n, int threads);
int pprm_mac_plain_simd(void);

#endif
