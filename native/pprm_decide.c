/*
 * The sealed key service's decisions in C: packed masked ciphertexts
 * (pprm/crypto/masked_codec.py) to the signs of their slots, the GIL
 * released, on `threads` pthreads.
 *
 * Why: MaskedDecryptor.signs does this with numpy in 19-23 ms for the 123
 * ciphertexts of a 1M gallery at N = 8192, and 14-20 ms on two threads. Its
 * three FFTs a ciphertext are only about 7 ms of that; the rest is a dozen
 * elementwise passes over temporaries, under the GIL, which is also why a
 * second thread barely helps. Here each ciphertext is read once and its
 * work stays in two arrays of h doubles per thread (64 KiB at N = 8192,
 * L2-resident), and the ciphertexts go to the threads from a shared counter.
 *
 * The computation is MaskedDecryptor._spectrum's, step for step, with the
 * same float64 operations in the elementwise steps (the word split, the
 * twist, the key product, c0's exact power-of-two shift, the reduction
 * m - rint(m / 2**c1_bits) * 2**c1_bits with nearbyint = numpy's rint):
 *
 *     S = ifft(twist * c1)      (unnormalised)     bit-reversed out (DIF)
 *     u = fft(S * key) / h * untwist               bit-reversed in (DIT)
 *     m = u + c0 * 2**(c1_bits - c0_bits), reduced
 *     V = ifft(twist * m)                          bit-reversed out (DIF)
 *
 * The key product is pointwise, so the middle domain may be in any order:
 * the key is stored bit-reversed and no transform reorders its data; the
 * last transform's bit reversal is folded into the slot map (pos). An
 * inverse transform is the forward one on swapped re/im arrays. The FFTs
 * are split-array radix-4 (plus one radix-2 stage when needed) with
 * contiguous per-stage twiddles, ending in a radix-8 leaf, so that every
 * loop vectorises; the file is compiled for AVX-512, AVX2 and the baseline
 * and the copy is picked at load time (target_clones; no -march=native).
 *
 * Why the signs are numpy's. Both paths compute the same exact quantity in
 * float64 and differ only in rounding: this FFT and pocketfft round
 * differently in the last bits, and FMA contraction (AVX2/AVX-512 copies)
 * rounds some products once instead of twice. The first two transforms
 * operate on c1 (|c1| < 2**(c1_bits-1)) and its product with the key,
 * whose coefficients are integers below 2**(c1_bits-1) * N in magnitude;
 * a float64 FFT of length h has a relative error of a few 2**-53 * log2(h)
 * of the vector norm, which masked_codec's budget bounds by _FFT_SLACK =
 * 1 output unit in the reduced coefficients m (tested there below 0.01
 * at N = 8192, c1_bits = 36, against exact integer products). The reduction
 * rint(m / 2**c1_bits) could take another branch than numpy's only where m
 * sits within that error of an odd multiple of 2**(c1_bits-1), and then the
 * coefficient would differ by 2**c1_bits. For a valid masked ciphertext it
 * never does: masked_layout chooses the gain so that the reduced
 * coefficient, the scaled decryption plus its rounding error, stays below
 * 2**(c1_bits-1) * (1 - 2**-20) in magnitude (_COEFF_SLACK), tens of
 * thousands of output units clear of the wrap (28,000 at N = 8192), so both
 * paths reduce every coefficient to the same integer plus their float
 * errors. (Arbitrary words can land within float error of a wrap, with a
 * chance of about N * 2**-c1_bits per ciphertext; the tests' random words
 * agree.) The last transform adds another few 2**-53 * log2(h) * ||m||.
 * So the two paths' V differ by less than one output unit (measured at
 * most 0.5 at N = 8192; tests/matching/test_decide_native.py), and a sign can
 * differ only where |V| is that small. masked_layout guarantees that every
 * decision that matters (|s - tau| >= margin) has |V| >= signal_min -
 * noise_bound > 0, tens of thousands of output units at N = 8192
 * (89,450 - 70,480 for the production set), so those signs are identical;
 * a slot within float error of 0 is inside the margin, where either answer
 * is allowed.
 *
 * Measured (2-core Xeon with AVX-512, N = 8192, h = 4096): one FFT of
 * length 4096 takes 9 us (DIF) / 8 us (DIT), against pocketfft's 18 us;
 * this call on the 123 ciphertexts of a 1M gallery takes 4.8 ms on one
 * thread and 2.7 ms on two, and SealedDecider.hits 5.5 and 3.4 ms, against
 * 19.7 and 13.6 ms on the numpy path in the same run.
 */
#include "pprm_decide.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "pprm_jobs.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__)
#define PPRM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PPRM_CLONES
#endif
#define INLINE static inline __attribute__((always_inline))

/* Every helper is inlined into the cloned callers, so it is compiled for each ISA. */

static int log2_exact(size_t h) {
    if (h < 2 || h > PPRM_FFT_MAX || (h & (h - 1)))
        return -1;
    int lg = 0;
    while (((size_t)1 << lg) < h)
        ++lg;
    return lg;
}

/* Radix-2 stages of the large transforms: one when log2(h) - 3 is odd, the
   rest are radix-4 down to span 32, then the radix-8 leaf. */
static int has_r2(int lg) { return lg >= 4 && ((lg - 3) & 1); }

size_t pprm_fft_table_len(size_t h) {
    const int lg = log2_exact(h);
    if (lg < 0)
        return 0;
    if (lg < 4)
        return 1; /* the leaf's constants are built in; one slot keeps the pointer valid */
    size_t len = has_r2(lg) ? h : 0, span = has_r2(lg) ? h / 2 : h;
    for (; span >= 32; span /= 4)
        len += 6 * (span / 4);
    return len;
}

int pprm_fft_tables(size_t h, double *out) {
    const int lg = log2_exact(h);
    if (lg < 0 || !out)
        return PPRM_DECIDE_EINVAL;
    if (lg < 4) {
        out[0] = 0.0;
        return PPRM_DECIDE_OK;
    }
    /* exp(-2 pi i k / L), the angle in long double: correctly rounded
       twiddles to within an ulp, as pocketfft's. */
    const long double tau = 6.283185307179586476925286766559005768L;
    size_t span = h;
    if (has_r2(lg)) {
        for (size_t k = 0; k < h / 2; ++k) {
            out[k] = (double)cosl(tau * k / h);
            out[h / 2 + k] = (double)-sinl(tau * k / h);
        }
        out += h;
        span = h / 2;
    }
    for (; span >= 32; span /= 4) {
        const size_t q = span / 4;
        for (size_t k = 0; k < q; ++k)
            for (size_t r = 1; r <= 3; ++r) {
                out[(2 * r - 2) * q + k] = (double)cosl(tau * (r * k) / span);
                out[(2 * r - 1) * q + k] = (double)-sinl(tau * (r * k) / span);
            }
        out += 6 * q;
    }
    return PPRM_DECIDE_OK;
}

/* (a + ib) * (c + id), the product's real and imaginary parts. */
#define CMUL(xr, xi, a, b, c, d)   \
    do {                           \
        const double a_ = (a), b_ = (b), c_ = (c), d_ = (d); \
        (xr) = a_ * c_ - b_ * d_;  \
        (xi) = a_ * d_ + b_ * c_;  \
    } while (0)

static const double S8 = 0.70710678118654752440; /* exp(-i pi / 4) = S8 - i S8 */

/* Radix-2 decimation in frequency on x[0..n) (n = 2, 4 or 8) with the
   exact eighth roots; the leaf of every transform. */
INLINE void dif8(double *xr, double *xi, size_t n) {
    for (size_t half = n / 2; half >= 1; half /= 2)
        for (size_t s = 0; s < n; s += 2 * half)
            for (size_t k = 0; k < half; ++k) {
                const size_t a = s + k, b = a + half;
                const double dr = xr[a] - xr[b], di = xi[a] - xi[b];
                xr[a] += xr[b];
                xi[a] += xi[b];
                const size_t e = k * (8 / (2 * half)); /* w_(2 half)^k = w_8^e */
                if (e == 0) {
                    xr[b] = dr, xi[b] = di;
                } else if (e == 2) { /* -i */
                    xr[b] = di, xi[b] = -dr;
                } else if (e == 1) { /* S8 (1 - i) */
                    xr[b] = S8 * (dr + di), xi[b] = S8 * (di - dr);
                } else { /* S8 (-1 - i) */
                    xr[b] = S8 * (di - dr), xi[b] = -S8 * (dr + di);
                }
            }
}

/* The transpose of dif8 (decimation in time, bit-reversed in, natural out). */
INLINE void dit8(double *xr, double *xi, size_t n) {
    for (size_t half = 1; half < n; half *= 2)
        for (size_t s = 0; s < n; s += 2 * half)
            for (size_t k = 0; k < half; ++k) {
                const size_t a = s + k, b = a + half;
                const size_t e = k * (8 / (2 * half));
                double tr, ti;
                if (e == 0) {
                    tr = xr[b], ti = xi[b];
                } else if (e == 2) {
                    tr = xi[b], ti = -xr[b];
                } else if (e == 1) {
                    tr = S8 * (xr[b] + xi[b]), ti = S8 * (xi[b] - xr[b]);
                } else {
                    tr = S8 * (xi[b] - xr[b]), ti = -S8 * (xr[b] + xi[b]);
                }
                xr[b] = xr[a] - tr, xi[b] = xi[a] - ti;
                xr[a] += tr, xi[a] += ti;
            }
}

/* The last three stages (spans 8, 4, 2) of fft_dif on every group of 8,
   written out so that GCC vectorises across groups (interleaved loads) rather
   than within one: dif8 in a loop ran at a third of the speed. */
INLINE void leaf_dif(double *restrict re, double *restrict im, size_t h) {
    for (size_t g = 0; g < h; g += 8) {
        const double r0 = re[g], r1 = re[g + 1], r2 = re[g + 2], r3 = re[g + 3];
        const double r4 = re[g + 4], r5 = re[g + 5], r6 = re[g + 6], r7 = re[g + 7];
        const double i0 = im[g], i1 = im[g + 1], i2 = im[g + 2], i3 = im[g + 3];
        const double i4 = im[g + 4], i5 = im[g + 5], i6 = im[g + 6], i7 = im[g + 7];
        /* span 8: a = x_k + x_(k+4), b = (x_k - x_(k+4)) w8^k */
        const double a0r = r0 + r4, a0i = i0 + i4, b0r = r0 - r4, b0i = i0 - i4;
        const double a1r = r1 + r5, a1i = i1 + i5, d1r = r1 - r5, d1i = i1 - i5;
        const double a2r = r2 + r6, a2i = i2 + i6, d2r = r2 - r6, d2i = i2 - i6;
        const double a3r = r3 + r7, a3i = i3 + i7, d3r = r3 - r7, d3i = i3 - i7;
        const double b1r = S8 * (d1r + d1i), b1i = S8 * (d1i - d1r);
        const double b2r = d2i, b2i = -d2r;
        const double b3r = S8 * (d3i - d3r), b3i = -S8 * (d3r + d3i);
        /* span 4 on a and on b (twiddles 1, -i), then span 2 */
        const double e0r = a0r + a2r, e0i = a0i + a2i, e2r = a0r - a2r, e2i = a0i - a2i;
        const double e1r = a1r + a3r, e1i = a1i + a3i, e3r = a1i - a3i, e3i = a3r - a1r;
        const double f0r = b0r + b2r, f0i = b0i + b2i, f2r = b0r - b2r, f2i = b0i - b2i;
        const double f1r = b1r + b3r, f1i = b1i + b3i, f3r = b1i - b3i, f3i = b3r - b1r;
        re[g] = e0r + e1r, im[g] = e0i + e1i, re[g + 1] = e0r - e1r, im[g + 1] = e0i - e1i;
        re[g + 2] = e2r + e3r, im[g + 2] = e2i + e3i, re[g + 3] = e2r - e3r, im[g + 3] = e2i - e3i;
        re[g + 4] = f0r + f1r, im[g + 4] = f0i + f1i, re[g + 5] = f0r - f1r, im[g + 5] = f0i - f1i;
        re[g + 6] = f2r + f3r, im[g + 6] = f2i + f3i, re[g + 7] = f2r - f3r, im[g + 7] = f2i - f3i;
    }
}

/* The transpose of leaf_dif: spans 2, 4, 8, twiddles applied before the sums. */
INLINE void leaf_dit(double *restrict re, double *restrict im, size_t h) {
    for (size_t g = 0; g < h; g += 8) {
        const double r0 = re[g], r1 = re[g + 1], r2 = re[g + 2], r3 = re[g + 3];
        const double r4 = re[g + 4], r5 = re[g + 5], r6 = re[g + 6], r7 = re[g + 7];
        const double i0 = im[g], i1 = im[g + 1], i2 = im[g + 2], i3 = im[g + 3];
        const double i4 = im[g + 4], i5 = im[g + 5], i6 = im[g + 6], i7 = im[g + 7];
        /* span 2 */
        const double s0r = r0 + r1, s0i = i0 + i1, s1r = r0 - r1, s1i = i0 - i1;
        const double s2r = r2 + r3, s2i = i2 + i3, s3r = r2 - r3, s3i = i2 - i3;
        const double s4r = r4 + r5, s4i = i4 + i5, s5r = r4 - r5, s5i = i4 - i5;
        const double s6r = r6 + r7, s6i = i6 + i7, s7r = r6 - r7, s7i = i6 - i7;
        /* span 4: (x_k, x_(k+2)) with w4^k, k = 0, 1 (w4 = -i) */
        const double t3r = s3i, t3i = -s3r, t7r = s7i, t7i = -s7r;
        const double a0r = s0r + s2r, a0i = s0i + s2i, a2r = s0r - s2r, a2i = s0i - s2i;
        const double a1r = s1r + t3r, a1i = s1i + t3i, a3r = s1r - t3r, a3i = s1i - t3i;
        const double c0r = s4r + s6r, c0i = s4i + s6i, c2r = s4r - s6r, c2i = s4i - s6i;
        const double c1r = s5r + t7r, c1i = s5i + t7i, c3r = s5r - t7r, c3i = s5i - t7i;
        /* span 8: (x_k, x_(k+4)) with w8^k */
        const double u1r = S8 * (c1r + c1i), u1i = S8 * (c1i - c1r);
        const double u2r = c2i, u2i = -c2r;
        const double u3r = S8 * (c3i - c3r), u3i = -S8 * (c3r + c3i);
        re[g] = a0r + c0r, im[g] = a0i + c0i, re[g + 4] = a0r - c0r, im[g + 4] = a0i - c0i;
        re[g + 1] = a1r + u1r, im[g + 1] = a1i + u1i, re[g + 5] = a1r - u1r, im[g + 5] = a1i - u1i;
        re[g + 2] = a2r + u2r, im[g + 2] = a2i + u2i, re[g + 6] = a2r - u2r, im[g + 6] = a2i - u2i;
        re[g + 3] = a3r + u3r, im[g + 3] = a3i + u3i, re[g + 7] = a3r - u3r, im[g + 7] = a3i - u3i;
    }
}

INLINE void r2_dif(double *restrict re, double *restrict im, size_t h, const double *restrict tw) {
    const size_t half = h / 2;
    const double *wr = tw, *wi = tw + half;
#pragma GCC ivdep
    for (size_t k = 0; k < half; ++k) {
        const double ar = re[k], ai = im[k], br = re[k + half], bi = im[k + half];
        re[k] = ar + br, im[k] = ai + bi;
        CMUL(re[k + half], im[k + half], ar - br, ai - bi, wr[k], wi[k]);
    }
}

INLINE void r2_dit(double *restrict re, double *restrict im, size_t h, const double *restrict tw) {
    const size_t half = h / 2;
    const double *wr = tw, *wi = tw + half;
#pragma GCC ivdep
    for (size_t k = 0; k < half; ++k) {
        double tr, ti;
        CMUL(tr, ti, re[k + half], im[k + half], wr[k], wi[k]);
        const double ar = re[k], ai = im[k];
        re[k] = ar + tr, im[k] = ai + ti;
        re[k + half] = ar - tr, im[k + half] = ai - ti;
    }
}

/* One radix-4 stage of span L = 4q; outputs in bit-reversed quarter order
   (residues 0, 2, 1, 3 mod 4), as two radix-2 stages would leave them. */
INLINE void r4_dif(double *restrict re, double *restrict im, size_t h, size_t q, const double *restrict tw) {
    const double *w1r = tw, *w1i = tw + q, *w2r = tw + 2 * q, *w2i = tw + 3 * q, *w3r = tw + 4 * q,
                 *w3i = tw + 5 * q;
    for (size_t i = 0; i < h; i += 4 * q) {
        double *r0 = re + i, *r1 = r0 + q, *r2 = r1 + q, *r3 = r2 + q;
        double *i0 = im + i, *i1 = i0 + q, *i2 = i1 + q, *i3 = i2 + q;
#pragma GCC ivdep
        for (size_t k = 0; k < q; ++k) {
            const double t0r = r0[k] + r2[k], t0i = i0[k] + i2[k];
            const double t1r = r0[k] - r2[k], t1i = i0[k] - i2[k];
            const double t2r = r1[k] + r3[k], t2i = i1[k] + i3[k];
            /* t3 = -i (a1 - a3) */
            const double t3r = i1[k] - i3[k], t3i = r3[k] - r1[k];
            r0[k] = t0r + t2r, i0[k] = t0i + t2i;
            CMUL(r1[k], i1[k], t0r - t2r, t0i - t2i, w2r[k], w2i[k]);
            CMUL(r2[k], i2[k], t1r + t3r, t1i + t3i, w1r[k], w1i[k]);
            CMUL(r3[k], i3[k], t1r - t3r, t1i - t3i, w3r[k], w3i[k]);
        }
    }
}

/* The transpose of r4_dif. */
INLINE void r4_dit(double *restrict re, double *restrict im, size_t h, size_t q, const double *restrict tw) {
    const double *w1r = tw, *w1i = tw + q, *w2r = tw + 2 * q, *w2i = tw + 3 * q, *w3r = tw + 4 * q,
                 *w3i = tw + 5 * q;
    for (size_t i = 0; i < h; i += 4 * q) {
        double *r0 = re + i, *r1 = r0 + q, *r2 = r1 + q, *r3 = r2 + q;
        double *i0 = im + i, *i1 = i0 + q, *i2 = i1 + q, *i3 = i2 + q;
#pragma GCC ivdep
        for (size_t k = 0; k < q; ++k) {
            double p1r, p1i, p2r, p2i, p3r, p3i;
            CMUL(p1r, p1i, r1[k], i1[k], w2r[k], w2i[k]);
            CMUL(p2r, p2i, r2[k], i2[k], w1r[k], w1i[k]);
            CMUL(p3r, p3i, r3[k], i3[k], w3r[k], w3i[k]);
            const double sr = r0[k] + p1r, si = i0[k] + p1i, dr = r0[k] - p1r, di = i0[k] - p1i;
            const double er = p2r + p3r, ei = p2i + p3i;
            /* f = -i (p2 - p3) */
            const double fr = p2i - p3i, fi = p3r - p2r;
            r0[k] = sr + er, i0[k] = si + ei;
            r1[k] = dr + fr, i1[k] = di + fi;
            r2[k] = sr - er, i2[k] = si - ei;
            r3[k] = dr - fr, i3[k] = di - fi;
        }
    }
}

/* Forward FFT, natural order in, bit-reversed out. */
INLINE void fft_dif(double *restrict re, double *restrict im, size_t h, int lg, const double *tw) {
    if (lg < 4) {
        dif8(re, im, h);
        return;
    }
    size_t span = h;
    if (has_r2(lg)) {
        r2_dif(re, im, h, tw);
        tw += h;
        span = h / 2;
    }
    for (; span >= 32; span /= 4) {
        r4_dif(re, im, h, span / 4, tw);
        tw += 6 * (span / 4);
    }
    leaf_dif(re, im, h);
}

/* Forward FFT, bit-reversed in, natural order out: the stages of fft_dif
   transposed, in reverse order (the DFT matrix is symmetric). */
INLINE void fft_dit(double *restrict re, double *restrict im, size_t h, int lg, const double *tw) {
    if (lg < 4) {
        dit8(re, im, h);
        return;
    }
    const size_t start = has_r2(lg) ? h / 2 : h;
    const double *end = tw + pprm_fft_table_len(h);
    leaf_dit(re, im, h);
    for (size_t span = 32; span <= start; span *= 4) {
        end -= 6 * (span / 4);
        r4_dit(re, im, h, span / 4, end);
    }
    if (has_r2(lg))
        r2_dit(re, im, h, tw);
}

static size_t bitrev(size_t x, int lg) {
    size_t r = 0;
    for (int b = 0; b < lg; ++b)
        r |= ((x >> b) & 1) << (lg - 1 - b);
    return r;
}

/* fft_dit compiled for each instruction set, for pprm_fft_dit. */
PPRM_CLONES static void fft_dit_any(double *re, double *im, size_t h, int lg, const double *tw) {
    fft_dit(re, im, h, lg, tw);
}

int pprm_fft_dit(double *re, double *im, size_t h, const double *tw) {
    const int lg = log2_exact(h);
    if (lg < 0 || !re || !im || !tw)
        return PPRM_DECIDE_EINVAL;
    fft_dit_any(re, im, h, lg, tw);
    return PPRM_DECIDE_OK;
}

PPRM_CLONES static void fft_natural(double *re, double *im, size_t h, int lg, const double *tw, double *tmp) {
    fft_dif(re, im, h, lg, tw);
    for (size_t k = 0; k < h; ++k) {
        tmp[k] = re[bitrev(k, lg)];
        tmp[h + k] = im[bitrev(k, lg)];
    }
    memcpy(re, tmp, h * sizeof *re);
    memcpy(im, tmp + h, h * sizeof *im);
}

int pprm_fft(double *re, double *im, size_t h, const double *tw, int inverse) {
    const int lg = log2_exact(h);
    if (lg < 0 || !re || !im || !tw)
        return PPRM_DECIDE_EINVAL;
    double *tmp = malloc(2 * h * sizeof *tmp);
    if (!tmp)
        return PPRM_DECIDE_ENOMEM;
    if (inverse)
        fft_natural(im, re, h, lg, tw, tmp);
    else
        fft_natural(re, im, h, lg, tw, tmp);
    free(tmp);
    return PPRM_DECIDE_OK;
}

/* Exact integer -> double conversions that vectorise on every ISA (a
   64-bit conversion instruction needs AVX-512DQ): a value x with |x| < 2**51
   is placed in the mantissa of 1.5 * 2**52 and the bias subtracted. */
#define MAGIC 0x1.8p52
INLINE double from_int(int64_t x) {
    union { uint64_t u; double d; } v = {.u = 0x4338000000000000ULL + (uint64_t)x};
    return v.d - MAGIC;
}

/* Round half to even for |x| < 2**51, as nearbyint and numpy's rint: adding
   and subtracting 1.5 * 2**52 leaves the integer the FPU rounded to (no
   -ffast-math here, so the sum is not folded away). */
INLINE double round_even(double x) { return (x + MAGIC) - MAGIC; }

/* One ciphertext: w[2h] words to signs and/or slot values (see the top).
   Returns nonzero, with the outputs unspecified, if the ciphertext is
   transparent (c1 = 0: it would decrypt without the key; unpack_masked
   refuses it too). */
PPRM_CLONES static int decide_one(const uint64_t *restrict w, const pprm_decide_ctx *c, int lg, double *restrict ar,
                                   double *restrict ai, uint8_t *restrict signs, double *restrict values) {
    const size_t h = c->h;
    const unsigned sh = c->c0_bits;
    const uint64_t low = ((uint64_t)1 << sh) - 1;
    const double c0_scale = ldexp(1.0, (int)c->c1_bits - (int)sh);
    const double top = ldexp(1.0, (int)c->c1_bits), inv_top = ldexp(1.0, -(int)c->c1_bits);
    const double *twr = c->twist_re, *twi = c->twist_im, *uwr = c->untwist_re, *uwi = c->untwist_im;
    const double *kr = c->key_re, *ki = c->key_im;
    /* c1 centred by the arithmetic shift, twisted. The inverse transforms
       are the forward one on swapped arrays: ifft(x) = swap(fft(swap(x))). */
    uint64_t seen = 0;
    for (size_t n = 0; n < h; ++n) {
        seen |= (w[n] >> sh) | (w[n + h] >> sh);
        const double a = from_int((int64_t)w[n] >> sh), b = from_int((int64_t)w[n + h] >> sh);
        CMUL(ar[n], ai[n], a, b, twr[n], twi[n]);
    }
    if (!seen)
        return 1;
    fft_dif(ai, ar, h, lg, c->fft_tw);
    for (size_t k = 0; k < h; ++k)
        CMUL(ar[k], ai[k], ar[k], ai[k], kr[k], ki[k]);
    fft_dit(ar, ai, h, lg, c->fft_tw);
    for (size_t n = 0; n < h; ++n) {
        double mr, mi;
        CMUL(mr, mi, ar[n], ai[n], uwr[n], uwi[n]);
        mr += from_int((int64_t)(w[n] & low)) * c0_scale;
        mi += from_int((int64_t)(w[n + h] & low)) * c0_scale;
        /* m * inv_top is exact (a power of two), as numpy's m / top, and
           |m| / top < 2**15 (|c1| < 2**(c1_bits-1), a ternary key, N <= 2**15). */
        mr -= round_even(mr * inv_top) * top;
        mi -= round_even(mi * inv_top) * top;
        CMUL(ar[n], ai[n], mr, mi, twr[n], twi[n]);
    }
    fft_dif(ai, ar, h, lg, c->fft_tw);
    const uint32_t *pos = c->pos;
    const uint8_t *conj = c->conjugated;
    if (signs) {
        for (size_t j = 0; j < h; ++j)
            signs[j] = ar[pos[j]] > 0.0;
        if (c->complex_packing)
            for (size_t j = 0; j < h; ++j) {
                const double v = ai[pos[j]];
                signs[h + j] = conj[j] ? v < 0.0 : v > 0.0;
            }
    }
    if (values)
        for (size_t j = 0; j < h; ++j) {
            values[2 * j] = ar[pos[j]];
            values[2 * j + 1] = conj[j] ? -ai[pos[j]] : ai[pos[j]];
        }
    return 0;
}

typedef struct {
    const uint64_t *words;
    size_t count;
    const pprm_decide_ctx *c;
    int lg;
    uint8_t *signs;
    double *values;
    size_t *next;
    int rc;
} decide_job_t;

static void *decide_main(void *arg) {
    decide_job_t *job = arg;
    const size_t h = job->c->h, stride = job->c->complex_packing ? 2 * h : h;
    /* Aligned for the vector loops; one buffer per thread for the whole job. */
    double *buf = aligned_alloc(64, 2 * h * sizeof *buf < 64 ? 64 : 2 * h * sizeof *buf);
    if (!buf) {
        job->rc = PPRM_DECIDE_ENOMEM;
        return NULL;
    }
    for (;;) {
        const size_t i = __atomic_fetch_add(job->next, 1, __ATOMIC_RELAXED);
        if (i >= job->count)
            break;
        if (decide_one(job->words + i * 2 * h, job->c, job->lg, buf, buf + h,
                       job->signs ? job->signs + i * stride : NULL, job->values ? job->values + i * 2 * h : NULL))
            job->rc = PPRM_DECIDE_TRANSPARENT;
    }
    free(buf);
    return NULL;
}

int pprm_decide(const uint64_t *words, size_t count, const pprm_decide_ctx *c, uint8_t *signs_out,
                double *values_out, int threads) {
    if (!c || !words || (!signs_out && !values_out) || count == 0 || threads < 0)
        return PPRM_DECIDE_EINVAL;
    const int lg = log2_exact(c->h);
    const size_t h = c->h;
    if (lg < 0 || !c->fft_tw || !c->twist_re || !c->twist_im || !c->untwist_re || !c->untwist_im || !c->key_re ||
        !c->key_im || !c->pos || !c->conjugated)
        return PPRM_DECIDE_EINVAL;
    /* from_int needs c0 and c1 below 2**51 in magnitude. */
    if (c->c0_bits < 12 || c->c0_bits > 51 || c->c0_bits + c->c1_bits != 64)
        return PPRM_DECIDE_EINVAL;
    if (count > SIZE_MAX / (2 * h))
        return PPRM_DECIDE_EINVAL;
    /* A slot map past the spectrum would read outside it. */
    uint32_t worst = 0;
    for (size_t j = 0; j < h; ++j)
        worst = c->pos[j] > worst ? c->pos[j] : worst;
    if (worst >= h)
        return PPRM_DECIDE_EINVAL;
    const long want = threads > 0 ? threads : online_cores();
    const size_t nthreads = (size_t)want < count ? (size_t)want : count;
    decide_job_t *jobs = calloc(nthreads, sizeof *jobs);
    if (!jobs)
        return PPRM_DECIDE_ENOMEM;
    size_t next = 0;
    for (size_t t = 0; t < nthreads; ++t)
        jobs[t] = (decide_job_t){words, count, c, lg, signs_out, values_out, &next, PPRM_DECIDE_OK};
    int rc = run_jobs(decide_main, jobs, sizeof *jobs, nthreads) ? PPRM_DECIDE_ENOMEM : PPRM_DECIDE_OK;
    for (size_t t = 0; t < nthreads && rc == PPRM_DECIDE_OK; ++t)
        rc = jobs[t].rc;
    free(jobs);
    return rc;
}
