/* Exact CKKS encoding in x87 long double: pprm/crypto/encoding.py, word for word.
 *
 * The blind database encodes every diagonal with encode_coefficients (an
 * 80-bit radix-2 FFT of the slot values, scaled and rounded) and
 * coefficients_to_residues (fmod by each prime). numpy's long-double loops
 * make that the slowest step of a rebuild; this file runs the same
 * arithmetic in C. "The same" is meant literally: the tests compare the
 * residues word for word with the numpy path, so every long-double operation
 * here is one numpy performs, on the same operands:
 *
 *   - the twiddle tables are numpy's own (computed by encoding._plan and
 *     passed in), never recomputed with C's cosl/sinl;
 *   - a complex product is numpy's clongdouble multiply,
 *     (ar*br - ai*bi, ar*bi + ai*br), each product rounded to long double
 *     before the sum (x87 has no fused multiply-add, and an x87 register
 *     holds exactly a long double, so there is no excess precision either;
 *     this file must never be built with -ffast-math, which reassociates);
 *   - the butterflies are those of encoding._dft, out = (e + o*w, e - o*w)
 *     with o*w computed once, stage after stage;
 *   - rintl rounds half to even in the default rounding mode, as np.rint.
 *
 * The one step done differently is the reduction: np.fmod is exact (the
 * remainder of two long doubles is always representable), so its result is
 * the mathematical |c| mod q with the sign of c, and an exact integer
 * reduction gives the same words; fmodl's x87 loop cost as much as the FFT.
 */
#include "pprm_encode.h"

#include <float.h>

#if defined(__x86_64__) && LDBL_MANT_DIG == 64

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "pprm_barrett.h"

/* numpy's clongdouble layout: real then imaginary, each a padded 16-byte long double. */
typedef struct {
    long double re, im;
} cld;

/* numpy's clongdouble product, operand for operand (see the top of this file). */
static inline cld cmul(cld x, cld w) {
    return (cld){x.re * w.re - x.im * w.im, x.re * w.im + x.im * w.re};
}

static inline cld cadd(cld x, cld y) {
    return (cld){x.re + y.re, x.im + y.im};
}

static inline cld csub(cld x, cld y) {
    return (cld){x.re - y.re, x.im - y.im};
}

/* Spread one vector's slots into the bit-reversed DFT input: slot j and,
 * conjugated, its mirror (numpy's z and np.conj(z)); unfilled slots are zero. */
static void scatter(cld *a, const double *vals, size_t m, const uint32_t *place, size_t n) {
    size_t slots = n / 2;
    for (size_t j = 0; j < slots; j++) {
        long double re = j < m ? (long double)vals[2 * j] : 0.0L;
        long double im = j < m ? (long double)vals[2 * j + 1] : 0.0L;
        a[place[j]] = (cld){re, im};
        a[place[slots + j]] = (cld){re, -im};
    }
}

/* encoding._dft after its bit-reversal gather: the stage of half-size h maps
 * each block of 2h values (e, o) to (e + o*w, e - o*w), w its twiddles.
 * Each pass does two stages, on the four quarters of a block of 4h values
 * that they mix: the same operations on the same operands, but the values
 * between the stages stay in registers. 80-bit stores are what limits an
 * x87 FFT, and this takes a third less time than one stage per pass. An odd
 * number of stages ends with a lone last stage. */
static void dft(cld *a, const cld *stages, size_t n) {
    size_t h = 1;
    for (; 4 * h <= n; h *= 4) {
        const cld *w1 = stages + (h - 1), *w2 = stages + (2 * h - 1);
        for (cld *p = a; p < a + n; p += 4 * h) {
            for (size_t j = 0; j < h; j++) {
                /* Stage h: quarters (0, 1) and (2, 3), both with w1[j]. */
                cld t = cmul(p[h + j], w1[j]);
                cld y0 = cadd(p[j], t), y1 = csub(p[j], t);
                t = cmul(p[3 * h + j], w1[j]);
                cld y2 = cadd(p[2 * h + j], t), y3 = csub(p[2 * h + j], t);
                /* Stage 2h: (y0, y2) with w2[j], and (y1, y3) with w2[h + j]. */
                t = cmul(y2, w2[j]);
                p[j] = cadd(y0, t);
                p[2 * h + j] = csub(y0, t);
                t = cmul(y3, w2[h + j]);
                p[h + j] = cadd(y1, t);
                p[3 * h + j] = csub(y1, t);
            }
        }
    }
    if (h < n) {
        const cld *w = stages + (h - 1);
        for (size_t j = 0; j < h; j++) {
            cld e = a[j], t = cmul(a[h + j], w[j]);
            a[j] = cadd(e, t);
            a[h + j] = csub(e, t);
        }
    }
}

/* The residue of the finite integer-valued *c in [0, q), as
 * coefficients_to_residues computes it: fmod's remainder, +-(|c| mod q) with
 * the sign of c, plus q if negative. The x87 format stores |c| = sig * 2**s,
 * a 64-bit significand (leading bit explicit) then the sign bit and a 15-bit
 * biased exponent; reading those from memory beats converting to an integer,
 * which without SSE3's fisttp switches the x87 control word twice per value. */
static uint64_t residue(const long double *c, const barrett_t *br) {
    uint64_t sig, r;
    uint16_t sign_exp;
    memcpy(&sig, c, sizeof sig);
    memcpy(&sign_exp, (const unsigned char *)c + sizeof sig, sizeof sign_exp);
    int s = (sign_exp & 0x7fff) - 16383 - 63;
    if (s <= 0) { /* an integer below 2**64; zero has s far below -63 */
        r = barrett_reduce(s > -64 ? sig >> -s : 0, br);
    } else {
        /* Shift the s bits in at most 64 at a time: r * 2**t stays below 2**126. */
        r = barrett_reduce(sig, br);
        for (; s > 0; s -= 64)
            r = barrett_reduce((u128)r << (s < 64 ? s : 64), br);
    }
    return (sign_exp & 0x8000) && r != 0 ? br->q - r : r;
}

int pprm_encode_residues(const double *values, size_t k, size_t m, int scale_bits, const uint32_t *place,
                         const long double *stages, const long double *twist, const uint64_t *moduli,
                         size_t nprimes, size_t n, uint64_t *out) {
    if (n < 2 || (n & (n - 1)) != 0 || m > n / 2)
        return PPRM_ENCODE_EINVAL;
    for (size_t l = 0; l < nprimes; l++)
        if (moduli[l] < 2 || moduli[l] >= (UINT64_C(1) << 62))
            return PPRM_ENCODE_EINVAL;
    /* A wrong place table would write outside the buffer, not just give wrong words. */
    for (size_t j = 0; j < n; j++)
        if (place[j] >= n)
            return PPRM_ENCODE_EINVAL;
    if (k == 0)
        return PPRM_ENCODE_OK;

    cld *a = malloc(n * sizeof *a);
    if (a == NULL)
        return PPRM_ENCODE_ENOMEM;
    const cld *tw = (const cld *)twist;
    /* As numpy: ldexp(1, bits) / n, a power of two, so the scaling is exact. */
    long double scale = ldexpl(1.0L, scale_bits) / (long double)n;
    int rc = PPRM_ENCODE_OK;
    for (size_t v = 0; v < k && rc == PPRM_ENCODE_OK; v++) {
        scatter(a, values + 2 * m * v, m, place, n);
        dft(a, (const cld *)stages, n);
        /* (dft * twist).real, scaled and rounded, kept in the real parts. */
        for (size_t i = 0; i < n; i++) {
            long double c = rintl((a[i].re * tw[i].re - a[i].im * tw[i].im) * scale);
            /* numpy turns an infinity or a NaN into a garbage integer; refuse it instead. */
            if (!isfinite(c)) {
                rc = PPRM_ENCODE_ERANGE;
                break;
            }
            a[i].re = c;
        }
        for (size_t l = 0; l < nprimes && rc == PPRM_ENCODE_OK; l++) {
            barrett_t br = barrett_make(moduli[l]);
            uint64_t *dst = out + (v * nprimes + l) * n;
            for (size_t i = 0; i < n; i++)
                dst[i] = residue(&a[i].re, &br);
        }
    }
    free(a);
    return rc;
}

#else

/* Exactness is defined for x87's 80-bit long double only, as in encoding.py,
 * and residue() reads that format: other platforms get the numpy path. */
int pprm_encode_residues(const double *values, size_t k, size_t m, int scale_bits, const uint32_t *place,
                         const long double *stages, const long double *twist, const uint64_t *moduli,
                         size_t nprimes, size_t n, uint64_t *out) {
    return PPRM_ENCODE_EINVAL;
}

#endif
