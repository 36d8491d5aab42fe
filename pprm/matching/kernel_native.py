"""The optional native multiply-accumulate kernels: the cffi loader and thin wrappers.

The C kernels (``native/pprm_kernel.c``, built by cffi in API mode as
``pprm._native_kernel``) compute exactly what the numpy kernels of
:mod:`pprm.matching.kernel_numpy` compute, under the same names and with the
same arguments, checks and results, but stream the residues once with
128-bit lazy accumulation (``plain_mac`` on AVX-512: exact float64 limb
products, see :func:`plain_mac_simd`) and split the work over pthreads (the
optional ``threads`` argument). cffi releases the GIL for the duration of a
call, so other Python threads keep running.

The extension is optional: :func:`available` says whether it was built and
loads. Loading waits for the first call, so importing this module costs
nothing. Whether it may be trusted is decided elsewhere
(:mod:`pprm.matching.kernel_selfcheck`, run by :func:`pprm.matching.kernel.backend`).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import numpy as np

from pprm.errors import BackendError
from pprm.matching.mac_args import PLAIN_RANGE_ERROR, check_mac_args, check_plain_mac_args

__all__ = [
    "available",
    "handles",
    "multiply_accumulate",
    "plain_mac",
    "default_threads",
    "MAX_ROW_L1",
    "WORD_RANGE_ERROR",
    "check_many_args",
    "multiply_accumulate_many",
    "result_buffer",
]

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


def handles() -> tuple[Any, Any]:
    """The loaded extension's ``(ffi, lib)``, for the other native modules of pprm.

    Returns:
        cffi's ``ffi`` and ``lib`` objects of ``pprm._native_kernel``.

    Raises:
        BackendError: the extension is not built or does not load.
    """
    if not available():
        raise BackendError(f"the native kernel is not built ({_load_error})")
    return _ffi, _lib


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
            kernel cannot compute exactly (the numpy kernel's checks,
            :func:`~pprm.matching.mac_args.check_mac_args`), or a negative
            thread count.
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


def plain_mac_simd() -> bool:
    """Whether :func:`plain_mac` runs its AVX-512 loop on this CPU (else its portable scalar one).

    Returns:
        True if the extension is built and the CPU has AVX-512F and AVX-512DQ.
    """
    return available() and bool(_lib.pprm_mac_plain_simd())


def plain_mac(
    pts: np.ndarray, cts: np.ndarray, moduli: tuple[int, ...], threads: int | None = None, *, scalar: bool = False
) -> np.ndarray:
    """Compute ``out[g, s] = sum_b pts[g, b] * cts[b, s] mod q_l`` exactly, in C.

    Same contract as :func:`pprm.matching.kernel.plain_mac`.

    Args:
        pts: ``uint64[G, B, L, N]`` plaintext residues in NTT form,
            C-contiguous (may be a read-only memory map; it is read once).
        cts: ``uint64[B, S, L, N]`` ciphertext residues in NTT form, C-contiguous.
        moduli: the L primes, each in ``[2, 2**60)``.
        threads: worker threads; 0 means every core this process may use,
            None means ``PPRM_THREADS`` or else every such core.
        scalar: test hook: take the portable scalar loop even where the
            AVX-512 one runs, so that tests can compare the two bit for bit.

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
    entry = lib.pprm_mac_plain_scalar if scalar else lib.pprm_mac_plain
    rc = entry(
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


# The batched kernel's contract (pprm.matching.kernel_batch), here rather than
# there because kernel_batch dispatches to this module: sum_k |w_k| per row
# times a 30-bit limb stays below 2**53 (MAX_ROW_L1 * (2**30 - 1) < 2**53).
MAX_ROW_L1 = 1 << 23
WORD_RANGE_ERROR = "a block word is 2**60 or more: not a residue below its prime"


def check_many_args(block: np.ndarray, weights: np.ndarray, moduli: tuple[int, ...]) -> np.ndarray:
    """Check the arguments of a batched multiply-accumulate (both backends).

    Args:
        block: should be ``uint64[d, size, L, N]``.
        weights: should be an integer ``[B, d]`` array whose every row has
            ``sum_k |w| <= MAX_ROW_L1``.
        moduli: should be L integers, each in ``[2, 2**60)``.

    Returns:
        The weights as a C-contiguous ``int64[B, d]`` array.

    Raises:
        BackendError: a dtype, shape or modulus outside the contract, or a
            weight row above the exactness bound. (A block word of 2**60 or
            more is found, and refused, by the kernels as they read it.)
    """
    if block.dtype != np.uint64 or block.ndim != 4:
        raise BackendError("block must be uint64[d, size, L, N]")
    if block.shape[2] != len(moduli) or any(not 2 <= int(q) < 2**60 for q in moduli):
        raise BackendError("one modulus per prime row, each in [2, 2**60)")
    w = np.asarray(weights)
    if w.ndim != 2 or w.shape[1] != block.shape[0] or not np.issubdtype(w.dtype, np.integer):
        raise BackendError(f"weights must be an integer [B, {block.shape[0]}] array")
    too_big = "a weight row sums to more than 2**23 in absolute value: not a unit-norm probe"
    if w.dtype == np.uint64 and w.size and int(w.max()) > MAX_ROW_L1:
        raise BackendError(too_big)  # would wrap to a negative int64 below
    w = np.ascontiguousarray(w, dtype=np.int64)
    # Each weight first, by its sign: np.abs(-2**63) wraps, and so could the
    # row sums of huge weights; with every |w| <= 2**23 they cannot.
    if w.size and (int(w.min()) < -MAX_ROW_L1 or int(w.max()) > MAX_ROW_L1):
        raise BackendError(too_big)
    if w.size and int(np.abs(w).sum(axis=1).max()) > MAX_ROW_L1:
        raise BackendError(too_big)
    return w


def result_buffer(out: np.ndarray | None, shape: tuple[int, ...], block: np.ndarray) -> np.ndarray:
    """``out`` checked as a result buffer of ``shape`` for ``block``, or a new one when None.

    Raises:
        BackendError: ``out`` is not a C-contiguous, writable ``uint64`` array
            of ``shape``, or it may share memory with ``block``.
    """
    if out is None:
        return np.empty(shape, dtype=np.uint64)
    if (not isinstance(out, np.ndarray) or out.dtype != np.uint64 or out.shape != shape
            or not out.flags.c_contiguous or not out.flags.writeable):
        raise BackendError(f"out must be a writable C-contiguous uint64 array of shape {shape}")
    if np.may_share_memory(out, block):
        raise BackendError("out must not overlap the block")
    return out


def multiply_accumulate_many(
    block: np.ndarray, weights: np.ndarray, moduli: tuple[int, ...], threads: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``out[b] = sum_k weights[b, k] * block[k] mod q_j``, exactly, for every row b, in C.

    Same contract as :func:`pprm.matching.kernel_batch.multiply_accumulate_many`
    (and bit for bit the same words): the block is read from memory once for
    all B probes, on ``threads`` pthreads, with the GIL released.

    Args:
        block: ``uint64[d, size, L, N]`` residues of ``d`` ciphertexts, each
            below its prime (may be a read-only memory map; a non-contiguous
            array is copied first).
        weights: ``int64[B, d]`` (any integer dtype), every row with
            ``sum_k |w| <= 2**23``.
        moduli: the L primes, each below 2**60.
        threads: worker threads; 0 means every core this process may use,
            None means ``PPRM_THREADS`` or else every such core.
        out: where to write the result (``uint64[B, size, L, N]``,
            C-contiguous, writable, apart from ``block``), or None for a new
            array. A caller that runs block after block reuses its buffers:
            a fresh 2 MiB result per block (16 probes) cost about 5% of the
            kernel's time in page faults.

    Returns:
        ``uint64[B, size, L, N]``, each residue in ``[0, q_j)``: ``out`` when given.

    Raises:
        BackendError: the extension is not built, an argument fails
            :func:`check_many_args`, ``out`` has the wrong shape, type or
            layout, a block word is 2**60 or more, a negative thread count,
            or the kernel runs out of memory.
    """
    if not available():
        raise BackendError(f"the native kernel is not built ({_load_error})")
    w = check_many_args(block, weights, moduli)
    if threads is None:
        threads = default_threads()
    if threads < 0:
        raise BackendError("threads must be >= 0 (0 = all cores)")
    nthreads = threads or _usable_cores()

    d, size, nprimes, n = block.shape
    nb = w.shape[0]
    out = result_buffer(out, (nb, size, nprimes, n), block)
    if out.size == 0:
        return out
    # Row (s, j) of the flattened [size * L] axis is reduced by prime j.
    row_moduli = np.ascontiguousarray(np.tile(np.asarray([int(q) for q in moduli], dtype=np.uint64), size))
    src = np.ascontiguousarray(block)
    ffi, lib = _ffi, _lib
    rc = lib.pprm_mac_many(
        ffi.from_buffer("uint64_t[]", src, require_writable=False),
        ffi.from_buffer("int64_t[]", w, require_writable=False),
        ffi.from_buffer("uint64_t[]", row_moduli, require_writable=False),
        ffi.from_buffer("uint64_t[]", out, require_writable=True),
        d,
        nb,
        size * nprimes,
        n,
        min(int(nthreads), 1 << 30),
    )
    if rc == lib.PPRM_ENOMEM:
        raise BackendError("native kernel failed: out of memory")
    if rc != lib.PPRM_OK:
        # Every other reason for PPRM_EINVAL was ruled out by check_many_args.
        raise BackendError(WORD_RANGE_ERROR)
    return out
