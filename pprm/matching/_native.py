"""Loader and thin wrappers for the optional native multiply-accumulate kernels.

The C kernels (``native/pprm_kernel.c``, built by cffi in API mode as
``pprm._native_kernel``) compute exactly what
:func:`pprm.matching.kernel.multiply_accumulate` and
:func:`pprm.matching.kernel.plain_mac` compute, with the same argument
checks, but stream the residues once with 128-bit lazy accumulation and
split the work over pthreads. cffi releases the GIL for the duration of a
call, so other Python threads keep running.

The extension is optional: :func:`available` says whether it was built and
loads, and :func:`self_check` compares it bit for bit with the numpy path on
a small random case before anyone should rely on it.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import numpy as np

from pprm.errors import BackendError
from pprm.matching.mac_args import MAX_PLAIN_B as _MAX_PLAIN_B
from pprm.matching.mac_args import MAX_WEIGHT as _MAX_WEIGHT
from pprm.matching.mac_args import PLAIN_RANGE_ERROR, check_mac_args, check_plain_mac_args

__all__ = ["available", "multiply_accumulate", "plain_mac", "self_check", "default_threads"]

_MODULE = "pprm._native_kernel"

_lib: Any = None
_ffi: Any = None
_load_error: str | None = None


def _load() -> None:
    # Import once; remember a failure so later calls neither retry nor raise.
    global _lib, _ffi, _load_error
    if _lib is not None or _load_error is not None:
        return
    try:
        # importlib keeps the compiled module (which has no type stubs) out of mypy's view.
        mod = importlib.import_module(_MODULE)
    except ImportError as exc:
        _load_error = str(exc) or type(exc).__name__
        return
    _lib, _ffi = mod.lib, mod.ffi


def available() -> bool:
    """Whether the native extension was built and can be loaded.

    Returns:
        True if ``pprm._native_kernel`` imports; the numpy path must be used otherwise.
    """
    _load()
    return _lib is not None


def default_threads() -> int:
    """Thread count used when none is given: ``PPRM_THREADS``, else 0 (all online cores).

    Returns:
        A non-negative thread count; 0 lets the kernel use every online core.

    Raises:
        BackendError: ``PPRM_THREADS`` is set but is not a non-negative integer.
    """
    raw = os.environ.get("PPRM_THREADS", "").strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise BackendError(f"PPRM_THREADS={raw!r} is not an integer") from None
    if value < 0:
        raise BackendError(f"PPRM_THREADS={raw!r} must be >= 0 (0 = all cores)")
    return value


def multiply_accumulate(
    block: np.ndarray, weights: np.ndarray, moduli: tuple[int, ...], threads: int | None = None
) -> np.ndarray:
    """Compute ``sum_k weights[k] * block[k] mod q_j`` exactly, in C.

    Same contract as :func:`pprm.matching.kernel.multiply_accumulate`.

    Args:
        block: ``uint64[d, size, L, N]`` residues of ``d`` ciphertexts (may be
            a read-only memory map; a non-contiguous array is copied first).
        weights: ``int64[d]`` (any integer dtype) with ``|w| <= 2**16``.
        moduli: the L primes, each below 2**60.
        threads: worker threads; 0 means all online cores, None means
            ``PPRM_THREADS`` or else all online cores.

    Returns:
        ``uint64[size, L, N]``: the residues of the linear combination, each in ``[0, q_j)``.

    Raises:
        BackendError: the extension is not built, or shapes or ranges the
            kernel cannot compute exactly (the same checks as the numpy path,
            plus a zero modulus, which has no residues).
    """
    if not available():
        raise BackendError(f"the native kernel is not built ({_load_error})")
    w = check_mac_args(block, weights, moduli)
    if threads is None:
        threads = default_threads()
    if threads < 0:
        raise BackendError("threads must be >= 0 (0 = all cores)")

    d, size, nprimes, n = block.shape
    rows = size * nprimes
    # Row (s, j) of the flattened [size * L] axis is reduced by prime j.
    row_moduli = np.ascontiguousarray(np.tile(np.asarray(moduli, dtype=np.uint64), size))
    src = np.ascontiguousarray(block)
    out = np.empty((size, nprimes, n), dtype=np.uint64)
    if out.size == 0:
        return out
    ffi, lib = _ffi, _lib
    rc = lib.pprm_mac_sealed(
        ffi.from_buffer("uint64_t[]", src, require_writable=False),
        ffi.from_buffer("int64_t[]", w, require_writable=False),
        ffi.from_buffer("uint64_t[]", row_moduli, require_writable=False),
        ffi.from_buffer("uint64_t[]", out, require_writable=True),
        d,
        rows,
        n,
        min(int(threads), 1 << 30),
    )
    if rc != lib.PPRM_OK:
        reason = "out of memory" if rc == lib.PPRM_ENOMEM else "invalid arguments"
        raise BackendError(f"native kernel failed: {reason}")
    return out


def _usable_cores() -> int:
    # The CPUs this process may run on (taskset, cgroup cpusets), not all the machine has.
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def plain_mac(pts: np.ndarray, cts: np.ndarray, moduli: tuple[int, ...], threads: int | None = None) -> np.ndarray:
    """Compute ``out[g, s] = sum_b pts[g, b] * cts[b, s] mod q_l`` exactly, in C.

    Same contract as :func:`pprm.matching.kernel.plain_mac`.

    Args:
        pts: ``uint64[G, B, L, N]`` plaintext residues in NTT form,
            C-contiguous (may be a read-only memory map; it is read once).
        cts: ``uint64[B, S, L, N]`` ciphertext residues in NTT form, C-contiguous.
        moduli: the L primes, each in ``[2, 2**60)``.
        threads: worker threads; 0 means every core this process may use,
            None means ``PPRM_THREADS`` or else every such core.

    Returns:
        ``uint64[G, S, L, N]``: the residues of the G sums, each in ``[0, q_l)``.

    Raises:
        BackendError: the extension is not built, an argument fails
            :func:`~pprm.matching.mac_args.check_plain_mac_args`, a residue is
            not below its modulus, or the kernel runs out of memory.
    """
    if not available():
        raise BackendError(f"the native kernel is not built ({_load_error})")
    g, b, size, nprimes, n = check_plain_mac_args(pts, cts, moduli)
    if threads is None:
        threads = default_threads()
    if threads < 0:
        raise BackendError("threads must be >= 0 (0 = all cores)")
    # The C function takes threads <= 0 as one thread; "all cores" is resolved here.
    nthreads = threads or _usable_cores()

    out = np.empty((g, size, nprimes, n), dtype=np.uint64)
    if out.size == 0:
        return out
    q = np.array([int(m) for m in moduli], dtype=np.uint64)
    ffi, lib = _ffi, _lib
    rc = lib.pprm_mac_plain(
        ffi.from_buffer("uint64_t[]", pts, require_writable=False),
        ffi.from_buffer("uint64_t[]", cts, require_writable=False),
        ffi.from_buffer("uint64_t[]", q, require_writable=False),
        ffi.from_buffer("uint64_t[]", out, require_writable=True),
        g,
        b,
        size,
        nprimes,
        n,
        min(int(nthreads), 1 << 30),
    )
    if rc == lib.PPRM_ENOMEM:
        raise BackendError("native kernel failed: out of memory")
    if rc != lib.PPRM_OK:
        # Every other reason for PPRM_EINVAL was ruled out by check_plain_mac_args.
        raise BackendError(PLAIN_RANGE_ERROR)
    return out


def self_check(seed: int = 0) -> bool:
    """Compare the native kernels with the numpy paths, bit for bit, on small random cases.

    The multiply-accumulate case has extreme values (``q - 1`` residues,
    ``+-2**16`` weights), two ciphertext components, two primes, and a
    coefficient count that is not a multiple of the kernel's tile; the
    ``plain_mac`` cases are described in :func:`_plain_cases`. They are small
    enough (a few ms) to run at import, so the kernels do them on one thread;
    the threaded split only deals whole tiles out and is covered by the test
    suite.

    Args:
        seed: seed of the random cases.

    Returns:
        True if the extension is available and agrees exactly; False otherwise.
    """
    if not available():
        return False
    # Imported here, not at the top: kernel imports this module and calls self_check
    # while it is itself being imported (by then _mac_numpy and _plain_mac_numpy are defined).
    from pprm.matching import kernel

    rng = np.random.default_rng(seed)
    moduli = (1152921504606830593, 1152921504606748673)
    d, size, n = 37, 2, 700
    q = np.asarray(moduli, dtype=np.uint64).reshape(1, 1, 2, 1)
    block = rng.integers(0, 1 << 62, size=(d, size, len(moduli), n), dtype=np.uint64) % q
    block[0] = q - np.uint64(1)
    weights = rng.integers(-_MAX_WEIGHT, _MAX_WEIGHT + 1, size=d, dtype=np.int64)
    weights[:2] = (_MAX_WEIGHT, -_MAX_WEIGHT)
    expected = kernel._mac_numpy(block, weights, moduli)
    try:
        if not np.array_equal(multiply_accumulate(block, weights, moduli, threads=1), expected):
            return False
        return all(
            np.array_equal(plain_mac(pts, cts, moduli, threads=1), kernel._plain_mac_numpy(pts, cts, moduli))
            for pts, cts in _plain_cases(rng, moduli)
        )
    except BackendError:
        return False


def _plain_cases(rng: np.random.Generator, moduli: tuple[int, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Small ``plain_mac`` cases with edge values, for :func:`self_check`.

    One per code path of the kernel: s = 2 with b not a multiple of its
    4-row step and n crossing a 256-coefficient tile, with zero and ``q - 1``
    rows; b = 256 with every residue ``q - 1`` (the largest sum the contract
    allows, just under 2**128); b = 1 with s = 3.
    """
    q = np.asarray(moduli, dtype=np.uint64).reshape(1, 1, len(moduli), 1)

    def residues(shape: tuple[int, int, int, int]) -> np.ndarray:
        return rng.integers(0, 1 << 62, size=shape, dtype=np.uint64) % q

    nl = len(moduli)
    top = q - np.uint64(1)
    pts, cts = residues((2, 37, nl, 300)), residues((37, 2, nl, 300))
    pts[0, :5] = top[0]
    cts[:3] = top
    pts[1, 7] = 0
    cts[9] = 0
    return [
        (pts, cts),
        (
            np.ascontiguousarray(np.broadcast_to(top, (1, _MAX_PLAIN_B, nl, 20))),
            np.ascontiguousarray(np.broadcast_to(top, (_MAX_PLAIN_B, 2, nl, 20))),
        ),
        (residues((3, 1, nl, 9)), residues((1, 3, nl, 9))),
    ]
