/* Several probes against one block in one pass: the batched exact multiply-accumulate (see pprm_batch.c). */
#ifndef PPRM_BATCH_H
#define PPRM_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "pprm_kernel.h" /* the return codes PPRM_OK, PPRM_EINVAL, PPRM_ENOMEM */

/* Largest sum_k |weights[b][k]| of one probe: 2**23 * (2**30 - 1) < 2**53. */
#define PPRM_MANY_MAX_ROW_L1 ((int64_t)1 << 23)

/* PPRM_EINVAL: a modulus outside [2, 2**60), a weight row above
   PPRM_MANY_MAX_ROW_L1, or a block word >= 2**60 (out is then unspecified). */
int pprm_mac_many(const uint64_t *block, const int64_t *weights, const uint64_t *moduli, uint64_t *out, size_t d,
                  size_t nb, size_t rows, size_t n, int threads);

#endif
