/* Exact multiply-accumulate over RNS residues (see pprm_kernel.c). */
#ifndef PPRM_KERNEL_H
#define PPRM_KERNEL_H

#include <stddef.h>
#include <stdint.h>

/* Return codes of pprm_mac_sealed. */
#define PPRM_OK 0
#define PPRM_EINVAL 1 /* a modulus is 0 or >= 2**60, a weight exceeds 2**16, or d > 2**16 */
#define PPRM_ENOMEM 2 /* the thread table could not be allocated */

int pprm_mac_sealed(const uint64_t *block, const int64_t *weights, const uint64_t *moduli,
                    uint64_t *out, size_t d, size_t rows, size_t n, int threads);

#endif
