/* The sealed key service's decisions: packed masked ciphertexts to slot signs
   in one multi-threaded call (see pprm_decide.c). */
#ifndef PPRM_DECIDE_H
#define PPRM_DECIDE_H

#include <stddef.h>
#include <stdint.h>

#define PPRM_DECIDE_OK 0
#define PPRM_DECIDE_EINVAL 1 /* a size, a table, a split or a thread count that is not valid */
#define PPRM_DECIDE_ENOMEM 2
#define PPRM_DECIDE_TRANSPARENT 3 /* a ciphertext has c1 = 0 (it would decrypt without the key) */

/* Largest FFT length (N/2 for N = 32768). */
#define PPRM_FFT_MAX 16384

/* Everything one ring dimension's decisions need besides the words. The
   spectral arrays are in bit-reversed order (the order the first FFT leaves
   them in). key_re/key_im are the secret key's embedding: as secret as the key. */
typedef struct {
    size_t h;                    /* N/2: a power of two, 2 <= h <= PPRM_FFT_MAX */
    const double *fft_tw;        /* pprm_fft_tables(h) */
    const double *twist_re;      /* exp(i pi n / N), n < h */
    const double *twist_im;
    const double *untwist_re;    /* exp(-i pi n / N) / h, n < h */
    const double *untwist_im;
    const double *key_re;        /* the key's spectrum, entry k at bitrev(k) */
    const double *key_im;
    const uint32_t *pos;         /* slot j -> bitrev(spectrum index of slot j), < h */
    const uint8_t *conjugated;   /* slot j holds the conjugate of its entry (imag_sign = -1) */
    unsigned c0_bits, c1_bits;   /* the word split: c0_bits + c1_bits = 64, 12 <= c0_bits <= 51 */
    int complex_packing;         /* 1: 2h signs per ciphertext (real parts, then imaginary); 0: h */
} pprm_decide_ctx;

/* Doubles in the FFT twiddle table of length h (0 if h is not valid). */
size_t pprm_fft_table_len(size_t h);

/* Fill out[pprm_fft_table_len(h)] with the twiddles of length h. */
int pprm_fft_tables(size_t h, double *out);

/* Unnormalised complex FFT of length h in place on split arrays, natural
   order in and out: X_k = sum_n x_n exp(-+2 pi i k n / h), the sign + when
   inverse is nonzero (numpy's ifft(norm="forward")). For tests: the decisions
   never reorder. */
int pprm_fft(double *re, double *im, size_t h, const double *tw, int inverse);

/* Forward FFT of length h in place on split arrays, bit-reversed order in
   and natural order out, X_k = sum_n x_n exp(-2 pi i k n / h): the mask
   drawing's transform (pprm_maskdraw.c). tw: pprm_fft_tables(h). */
int pprm_fft_dit(double *re, double *im, size_t h, const double *tw);

/* Decide `count` packed ciphertexts (words: uint64[count][2h]) on `threads`
   pthreads (0: every online core). signs_out: uint8[count][2h] with complex
   packing, else uint8[count][h], 1 where the slot part is positive;
   values_out (nullable; signs_out may then be NULL): double[count][h][2], the
   decryption's slot values (re, im) in slot order, in output units.
   Returns PPRM_DECIDE_TRANSPARENT, with the outputs unspecified, if any
   ciphertext is transparent. */
int pprm_decide(const uint64_t *words, size_t count, const pprm_decide_ctx *c, uint8_t *signs_out,
                double *values_out, int threads);

#endif
