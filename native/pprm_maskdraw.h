/* The sealed profile's per-block masks, turned from random words into the
   polynomials the masking multiplies by (see pprm_maskdraw.c). */
#ifndef PPRM_MASKDRAW_H
#define PPRM_MASKDRAW_H

#include <stddef.h>
#include <stdint.h>

#define PPRM_MD_OK 0
#define PPRM_MD_EINVAL 1   /* bad tables, or a coefficient that would not fit below 2**62 */
#define PPRM_MD_OVER_CAP 2 /* the draw's mean rho exceeds the cap: draw again with fresh words */

/* What the masks of one block need besides their random words. */
typedef struct {
    size_t h;                    /* slots per ciphertext: N/2, a power of two */
    const uint32_t *pos;         /* slot j -> its bit-reversed spectrum index */
    const uint8_t *conjugated;   /* slot j holds the conjugate of its spectrum entry */
    const double *fft_tw;        /* pprm_fft_tables(h) (pprm_decide.h) */
    const double *untwist_re;    /* exp(-i pi k / N) / h, k < h */
    const double *untwist_im;
    double log2_max;             /* r = 2**(u * log2_max) */
    double quarter_margin;       /* |e| <= r * quarter_margin */
    double rho_cap;              /* largest mean over slots of sqrt(r_A**2 + r_B**2) */
    double mask_scale;           /* 2**mask_scale_bits */
    double result_scale;         /* 2**result_scale_bits */
    uint64_t q0;                 /* the noise polynomial is returned mod q0 */
} pprm_maskdraw_ctx;

/* Masks of one block from 4h random 64-bit words (r_A, e_A, r_B, e_B: h
   words each, in that order; each word's top 53 bits make one uniform).
   occupied: uint8[2h], half A then half B. Writes mask_a and mask_b
   (int64[2h], the integer polynomials of r_A + r_B and r_A - r_B, exactly
   real in every slot) and noise (uint64[2h], e_A + i e_B at the result
   scale, mod q0). Returns PPRM_MD_OVER_CAP, with the outputs unspecified,
   when the draw must be discarded. Draws no randomness of its own. */
int pprm_masks_from_words(const uint64_t *words, const uint8_t *occupied, const pprm_maskdraw_ctx *c,
                          int64_t *mask_a, int64_t *mask_b, uint64_t *noise);

#endif
