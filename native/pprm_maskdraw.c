/*
 * The sealed profile's per-block masks (complex packing), from random words
 * to the polynomials pprm_mask_complex multiplies by: the C counterpart of
 * pprm/matching/mask.py (draw_masks, the cap test of draw_block_masks) and
 * of SlotTransform.encode_real / encode_complex (pprm/crypto/embedding.py).
 *
 * Per slot j of half X (A or B), from two uniforms u, v in [0, 1) with 53
 * random bits each (the top bits of one 64-bit word each):
 *
 *     r = 2**(u * log2_max),  e = (2v - 1) * r * margin / 4
 *
 * and r = 1, e = -1 at a free position (a certain non-hit). The draw is
 * refused (PPRM_MD_OVER_CAP) when the mean over slots of
 * sqrt(r_A**2 + r_B**2) exceeds the cap; the caller then draws fresh words,
 * as draw_block_masks does (never reusing a refused draw).
 *
 * Encoding. A slot vector's polynomial is found through its spectrum
 * (embedding.py's module docstring): slot j is spectrum entry index[j] or
 * its conjugate; coefficients k and k + h are the real and imaginary parts
 * of FFT(spectrum)[k] * exp(-i pi k / N) / h. The slots of a = r_A + r_B and
 * b = r_A - r_B are real, so their spectra are real, and one complex FFT of
 * a + i b gives both transforms (F_a[k] = (F[k] + conj F[-k]) / 2, F_b[k] =
 * (F[k] - conj F[-k]) / 2i). The mask polynomials are then rounded for
 * k < h and made exactly antisymmetric (m_h = 0, m_{N-k} = -m_k), which is
 * what makes every slot exactly real (see sealed.py); e_A + i e_B takes a
 * second FFT and is rounded whole. Float64 throughout: the rounding to
 * integers is what the error budget counts (masked_codec.py), and a float
 * error of 1e-12 moves a rounded coefficient by one only at an exact tie.
 * The FFTs are the key service's (pprm_fft_dit in pprm_decide.c: split
 * arrays, radix 4 and 8, a copy per instruction set; 8-9 us at h = 4096
 * against 20-25 us for the scalar radix-2 loop this file had). numpy's
 * pocketfft and it round differently in the last bits, so the two paths
 * agree to within one per coefficient (checked by
 * tests/matching/test_mask_draw.py), not word for word.
 *
 * Randomness: none is drawn here, as in pprm_encrypt.c. The caller passes
 * words from the OS CSPRNG (os.urandom releases the GIL while it reads, so
 * several blocks' draws proceed at once).
 */
#include "pprm_maskdraw.h"

#include <math.h>
#include <stdlib.h>

#include "pprm_decide.h"
#include "pprm_round.h"

/* Round to nearest, ties to even (numpy's rint), and check the 2**62 bound. */
static inline int round_checked(double x, int64_t *out) {
    const double r = pprm_rint(x);
    if (!(fabs(r) < 0x1p62))
        return -1;
    *out = (int64_t)r;
    return 0;
}

/* x mod q in [0, q), for q < 2**62. The noise coefficients are far below
   q, so a comparison settles almost every one; a 64-bit division costs
   more than the rest of a coefficient's work. */
static inline uint64_t mod_q(int64_t x, uint64_t q) {
    const int64_t qs = (int64_t)q;
    if (x >= 0 && x < qs)
        return (uint64_t)x;
    if (x < 0 && x >= -qs)
        return (uint64_t)(x + qs);
    const int64_t r = x % qs;
    return (uint64_t)(r < 0 ? r + qs : r);
}

int pprm_masks_from_words(const uint64_t *words, const uint8_t *occupied, const pprm_maskdraw_ctx *c,
                          int64_t *mask_a, int64_t *mask_b, uint64_t *noise) {
    const size_t h = c->h, n = 2 * h;
    if (h < 2 || (h & (h - 1)) || c->q0 < 2 || c->q0 >> 62)
        return PPRM_MD_EINVAL;
    double *buf = malloc(6 * h * sizeof *buf);
    if (!buf)
        return PPRM_MD_EINVAL;
    double *ar = buf, *ai = buf + h, *er = buf + 2 * h, *ei = buf + 3 * h, *fr = buf + 4 * h, *fi = buf + 5 * h;
    const double unit = 0x1p-53;
    double rho_sum = 0.0;
    for (size_t j = 0; j < h; ++j) {
        const uint8_t oa = occupied[j], ob = occupied[h + j];
        double ra = exp2((double)(words[j] >> 11) * unit * c->log2_max);
        double ea = (2.0 * ((double)(words[h + j] >> 11) * unit) - 1.0) * ra * c->quarter_margin;
        double rb = exp2((double)(words[2 * h + j] >> 11) * unit * c->log2_max);
        double eb = (2.0 * ((double)(words[3 * h + j] >> 11) * unit) - 1.0) * rb * c->quarter_margin;
        if (!oa) {
            ra = 1.0;
            ea = -1.0;
        }
        if (!ob) {
            rb = 1.0;
            eb = -1.0;
        }
        rho_sum += sqrt(ra * ra + rb * rb);
        /* Slot j's value lands at its spectrum entry (bit-reversed for the
           FFT); a conjugated slot contributes the conjugate of its value,
           which changes nothing for the real a and b. */
        const size_t p = c->pos[j];
        ar[p] = ra + rb;
        ai[p] = ra - rb;
        er[p] = ea;
        ei[p] = c->conjugated[j] ? -eb : eb;
    }
    if (rho_sum / (double)h > c->rho_cap) {
        free(buf);
        return PPRM_MD_OVER_CAP;
    }
    if (pprm_fft_dit(ar, ai, h, c->fft_tw) != PPRM_DECIDE_OK || pprm_fft_dit(er, ei, h, c->fft_tw) != PPRM_DECIDE_OK) {
        free(buf);
        return PPRM_MD_EINVAL;
    }
    int bad = 0;
    for (size_t k = 0; k < h; ++k) {
        /* Separate the two real-spectrum transforms packed as a + i b. */
        const size_t m = (h - k) & (h - 1);
        const double fa_r = 0.5 * (ar[k] + ar[m]), fa_i = 0.5 * (ai[k] - ai[m]);
        const double fb_r = 0.5 * (ai[k] + ai[m]), fb_i = -0.5 * (ar[k] - ar[m]);
        const double ur = c->untwist_re[k], ui = c->untwist_im[k];
        /* Only the coefficients k < h are computed for the masks: the rest
           follow from antisymmetry. */
        fr[k] = (fa_r * ur - fa_i * ui) * c->mask_scale;
        fi[k] = (fb_r * ur - fb_i * ui) * c->mask_scale;
        const double nr = (er[k] * ur - ei[k] * ui) * c->result_scale;
        const double ni = (er[k] * ui + ei[k] * ur) * c->result_scale;
        int64_t lo = 0, hi = 0;
        bad |= round_checked(nr, &lo) | round_checked(ni, &hi);
        noise[k] = mod_q(lo, c->q0);
        noise[k + h] = mod_q(hi, c->q0);
    }
    for (size_t k = 0; k < h; ++k) {
        bad |= round_checked(fr[k], &mask_a[k]) | round_checked(fi[k], &mask_b[k]);
    }
    free(buf);
    if (bad)
        return PPRM_MD_EINVAL;
    mask_a[h] = mask_b[h] = 0;
    for (size_t k = 1; k < h; ++k) {
        mask_a[n - k] = -mask_a[k];
        mask_b[n - k] = -mask_b[k];
    }
    return PPRM_MD_OK;
}
