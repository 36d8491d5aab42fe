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
    """
)
ffibuilder.set_source(
    "pprm._native_kernel",
    '#include "pprm_kernel.h"',
    sources=["native/pprm_kernel.c"],
    depends=["native/pprm_kernel.h"],
    include_dirs=["native"],
    # No -march=native: the C source picks AVX-512/AVX2 at load time (target_clones),
    # so the built module stays valid on any x86-64 it is copied to.
    extra_compile_args=["-O3", "-std=gnu11", "-pthread"],
    extra_link_args=["-pthread"],
    libraries=["pthread"],
)
