"""cffi (API mode, out-of-line) build of the optional native kernels ``pprm._native_kernel``.

Used by ``setup.py`` through ``cffi_modules``, so ``pip install .`` (or
``pip install -e .``, or ``python setup.py build_ext --inplace``) builds it.
Paths are relative to the repository root, the working directory of those
commands; setuptools wants relative source paths so that an sdist works.
"""

from __future__ import annotations

from cffi import FFI

__all__ = ["ffibuilder"]

ffibuilder = FFI()
ffibuilder.cdef(
    """
    #define PPRM_OK ...
    #define PPRM_EINVAL ...
    #define PPRM_ENOMEM ...
    int pprm_mac_sealed(const uint64_t *block, const int64_t *weights, const uint64_t *moduli,
                        uint64_t *out, size_t d, size_t rows, size_t n, int threads);
    int pprm_mac_plain(const uint64_t *pts, const uint64_t *cts, const uint64_t *moduli, uint64_t *out,
                       size_t g, size_t b, size_t s, size_t l, size_t n, int threads);
    int pprm_mac_plain_scalar(const uint64_t *pts, const uint64_t *cts, const uint64_t *moduli, uint64_t *out,
                              size_t g, size_t b, size_t s, size_t l, size_t n, int threads);
    int pprm_mac_plain_simd(void);
    #define PPRM_MANY_MAX_ROW_L1 ...
    int pprm_mac_many(const uint64_t *block, const int64_t *weights, const uint64_t *moduli, uint64_t *out,
                      size_t d, size_t nb, size_t rows, size_t n, int threads);
    #define PPRM_MASK_OK ...
    #define PPRM_MASK_EINVAL ...
    #define PPRM_MASK_ENOMEM ...
    typedef struct {
        uint64_t q;
        size_t n;
        const uint64_t *roots;
        const uint64_t *roots_shoup;
        const uint64_t *inv_roots;
        const uint64_t *inv_roots_shoup;
        uint64_t inv_n, inv_n_shoup;
    } pprm_ntt_table;
    typedef struct {
        pprm_ntt_table q0, p;
        uint64_t q0_ratio[2];
        const uint32_t *perm;
        const uint64_t *key;
        const uint64_t *key_shoup;
        uint64_t p_inv, p_inv_shoup;
    } pprm_mask_ctx;
    int pprm_ntt(uint64_t *a, const pprm_ntt_table *t, int inverse);
    int pprm_shoup(const uint64_t *w, uint64_t *out, size_t n, uint64_t q);
    int pprm_mask_complex(const uint64_t *ct, const uint64_t *tau, const int64_t *mask_a, const int64_t *mask_b,
                          const uint64_t *noise, const pprm_mask_ctx *c, uint64_t *out);
    #define PPRM_ENC_OK ...
    #define PPRM_ENC_EINVAL ...
    #define PPRM_ENC_ENOMEM ...
    #define PPRM_ENC_EAGAIN ...
    #define PPRM_ENC_NOISE_BYTES ...
    int pprm_encrypt_block(const int64_t *m, const uint64_t *pool, size_t pool_words, const uint8_t *noise,
                           const uint64_t *s, const pprm_ntt_table *t, uint64_t *out, size_t rows, int threads);
    int pprm_decrypt_block(const uint64_t *ct, const uint64_t *s, const pprm_ntt_table *t, int64_t *out,
                           size_t rows, int threads);
    #define PPRM_ENCODE_OK ...
    #define PPRM_ENCODE_EINVAL ...
    #define PPRM_ENCODE_ENOMEM ...
    #define PPRM_ENCODE_ERANGE ...
    #define PPRM_MD_OK ...
    #define PPRM_MD_EINVAL ...
    #define PPRM_MD_OVER_CAP ...
    typedef struct {
        size_t h;
        const uint32_t *pos;
        const uint8_t *conjugated;
        const double *fft_tw;
        const double *untwist_re;
        const double *untwist_im;
        double log2_max;
        double quarter_margin;
        double rho_cap;
        double mask_scale;
        double result_scale;
        uint64_t q0;
    } pprm_maskdraw_ctx;
    int pprm_masks_from_words(const uint64_t *words, const uint8_t *occupied, const pprm_maskdraw_ctx *c,
                              int64_t *mask_a, int64_t *mask_b, uint64_t *noise);
    typedef struct {
        double scale0, scale1;
        unsigned c0_bits, c1_bits;
    } pprm_pack_params;
    #define PPRM_GROUP_DONE ...
    #define PPRM_GROUP_REDRAW ...
    int pprm_mask_group(size_t count, const uint64_t *cts, const uint64_t *tau, const uint64_t *words,
                        const uint8_t *occupied, const pprm_mask_ctx *mc, const pprm_maskdraw_ctx *dc,
                        const pprm_pack_params *pk, uint64_t *out, int *status, int threads);
    #define PPRM_GALOIS_OK ...
    #define PPRM_GALOIS_EINVAL ...
    #define PPRM_GALOIS_ENOMEM ...
    #define PPRM_GALOIS_TRANSPARENT ...
    typedef struct {
        size_t n;
        size_t digits;
        const pprm_ntt_table *tables;
        const uint32_t *perm;
        const uint64_t *key;
        const uint64_t *key_shoup;
        const uint64_t *p_inv;
        const uint64_t *p_inv_shoup;
    } pprm_galois_key;
    int pprm_apply_galois(const uint64_t *ct, size_t level, const pprm_galois_key *k, uint64_t *out);
    int pprm_encode_residues(const double *values, size_t k, size_t m, int scale_bits, const uint32_t *place,
                             const long double *stages, const long double *twist, const uint64_t *moduli,
                             size_t nprimes, size_t n, uint64_t *out);
    #define PPRM_DECIDE_OK ...
    #define PPRM_DECIDE_EINVAL ...
    #define PPRM_DECIDE_ENOMEM ...
    #define PPRM_DECIDE_TRANSPARENT ...
    #define PPRM_FFT_MAX ...
    typedef struct {
        size_t h;
        const double *fft_tw;
        const double *twist_re;
        const double *twist_im;
        const double *untwist_re;
        const double *untwist_im;
        const double *key_re;
        const double *key_im;
        const uint32_t *pos;
        const uint8_t *conjugated;
        unsigned c0_bits, c1_bits;
        int complex_packing;
    } pprm_decide_ctx;
    size_t pprm_fft_table_len(size_t h);
    int pprm_fft_tables(size_t h, double *out);
    int pprm_fft(double *re, double *im, size_t h, const double *tw, int inverse);
    int pprm_fft_dit(double *re, double *im, size_t h, const double *tw);
    int pprm_decide(const uint64_t *words, size_t count, const pprm_decide_ctx *c, uint8_t *signs_out,
                    double *values_out, int threads);
    """
)
ffibuilder.set_source(
    "pprm._native_kernel",
    '#include "pprm_kernel.h"\n#include "pprm_batch.h"\n#include "pprm_mask.h"\n#include "pprm_encrypt.h"\n'
    '#include "pprm_encode.h"\n#include "pprm_maskdraw.h"\n#include "pprm_mask_group.h"\n#include "pprm_galois.h"\n'
    '#include "pprm_decide.h"',
    sources=["native/pprm_kernel.c", "native/pprm_batch.c", "native/pprm_mask.c", "native/pprm_encrypt.c",
             "native/pprm_encode.c", "native/pprm_maskdraw.c", "native/pprm_mask_group.c", "native/pprm_galois.c",
             "native/pprm_decide.c"],
    depends=[
        "native/pprm_kernel.h",
        "native/pprm_batch.h",
        "native/pprm_batch_isa.h",
        "native/pprm_barrett.h",
        "native/pprm_round.h",
        "native/pprm_jobs.h",
        "native/pprm_mask.h",
        "native/pprm_encrypt.h",
        "native/pprm_encode.h",
        "native/pprm_maskdraw.h",
        "native/pprm_mask_group.h",
        "native/pprm_galois.h",
        "native/pprm_decide.h",
    ],
    include_dirs=["native"],
    # No -march=native: the C source picks AVX-512/AVX2 at load time (target_clones),
    # so the built module stays valid on any x86-64 it is copied to.
    extra_compile_args=["-O3", "-std=gnu11", "-pthread"],
    extra_link_args=["-pthread"],
    libraries=["pthread", "m"],
)
