/* The sealed profile's masking of a group of blocks in one call, on threads (see pprm_mask_group.c). */
#ifndef PPRM_MASK_GROUP_H
#define PPRM_MASK_GROUP_H

#include <stddef.h>
#include <stdint.h>

#include "pprm_mask.h"
#include "pprm_maskdraw.h"

/* How a masked ciphertext is cut down to one 64-bit word per coefficient
   pair (pprm/crypto/masked_codec.py, encode_masked). */
typedef struct {
    double scale0, scale1;     /* gain / q0 * 2**c0_bits, gain / q0 * 2**c1_bits */
    unsigned c0_bits, c1_bits; /* c0_bits + c1_bits = 64 */
} pprm_pack_params;

/* Per-block outcome in `status`. */
#define PPRM_GROUP_DONE 0
#define PPRM_GROUP_REDRAW 1 /* the block's words gave masks over the cap: mask it again with fresh words */

/* For each of `count` blocks i: masks from words[i] (pprm_masks_from_words),
   then pprm_mask_complex on cts[i] with them, then the packed words of the
   result in out[i]. cts: uint64[count][2][N]; words: uint64[count][2N];
   occupied: uint8[count][N]; out: uint64[count][N]; status: int[count].
   threads <= 0 means all online cores. Returns PPRM_MASK_OK (see status),
   or PPRM_MASK_EINVAL / PPRM_MASK_ENOMEM (out and status unspecified). */
int pprm_mask_group(size_t count, const uint64_t *cts, const uint64_t *tau, const uint64_t *words,
                    const uint8_t *occupied, const pprm_mask_ctx *mc, const pprm_maskdraw_ctx *dc,
                    const pprm_pack_params *pk, uint64_t *out, int *status, int threads);

#endif
