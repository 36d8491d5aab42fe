"""The batched multiply-accumulates over RNS residues, dispatched to the kernel chosen on first use.

Both profiles spend their time here: the sealed profile in
:func:`multiply_accumulate` (integer weights times the residues of ``d``
ciphertexts), the blind profile's baby-step/giant-step matrix-vector product
in :func:`plain_mac` (plaintexts times ciphertexts, coefficient by
coefficient in NTT form). Each exists twice, with the same arguments and
bit-identical results: in numpy (:mod:`pprm.matching.kernel_numpy`, always
present) and in C (:mod:`pprm.matching.kernel_native`, built by setup.py
when a compiler is present, and faster).

:func:`backend` chooses between them the first time a kernel is needed, not
at import: the native kernels are used only if they load and pass
:func:`~pprm.matching.kernel_selfcheck.native_passes_self_check` (bit for
bit against numpy and against SEAL's own evaluator), which costs a SEAL
context, a key and a few encryptions that ``import pprm`` or ``pprm --help``
should not pay. :data:`BACKEND` (also ``pprm.BACKEND``) is the same choice,
read lazily. The environment steers it:

* ``PPRM_BACKEND=native|numpy`` forces a backend; one that is not available
  (native not built, or failing its self-check) is a :class:`BackendError`.
* ``PPRM_REQUIRE_NATIVE=1`` makes a missing or failing native build a
  :class:`BackendError` instead of a warning and a fallback to numpy.
* ``PPRM_THREADS`` sets the native kernels' thread count
  (:func:`~pprm.matching.kernel_native.default_threads`).
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import TYPE_CHECKING

import numpy as np

from pprm.errors import BackendError, BackendWarning
from pprm.matching import kernel_native, kernel_numpy
from pprm.matching.kernel_numpy import mulmod_pow2
from pprm.matching.mac_args import MAX_WEIGHT

__all__ = [
    "BACKEND",
    "MAX_WEIGHT",
    "multiply_accumulate",
    "plain_mac",
    "mulmod_pow2",
    "available_backends",
    "backend",
]

# The active backend, "native" or "numpy": computed by backend() when first read,
# through the module __getattr__ below, so that importing this module checks nothing.
BACKEND: str

# Reentrant: backend() holds it while calling available_backends(), which takes it too.
_lock = threading.RLock()
_native_ok: bool | None = None
_selected: str | None = None


def available_backends() -> list[str]:
    """Backends that can run on this machine, fastest first.

    The first call loads the native extension and runs its self-check
    against numpy and SEAL; the answer is kept for the life of the process.
    Safe to call from several threads: the check runs once.

    Returns:
        ``["native", "numpy"]`` if the native kernels are built and pass
        their self-check, else ``["numpy"]``.

    Raises:
        BackendError: ``PPRM_THREADS`` is set but invalid (the self-check
            runs the native kernels with the default thread count).

    Warning:
        A native build that loads but disagrees with numpy or SEAL is
        dropped with a :class:`~pprm.errors.BackendWarning` (a
        :class:`RuntimeWarning`, printed as one line), and so is a missing build
        (unless ``PPRM_BACKEND=numpy``): results stay exact, only slower.
        Set ``PPRM_REQUIRE_NATIVE=1`` to make either an error.
    """
    global _native_ok
    with _lock:
        if _native_ok is None:
            # Imported here: it builds SEAL contexts, needed only for this one decision.
            from pprm.matching.kernel_selfcheck import native_passes_self_check

            _native_ok = native_passes_self_check()
            if kernel_native.available() and not _native_ok:
                _warn_fallback("pprm native kernel failed its self-check against numpy and SEAL; using numpy")
            if not kernel_native.available() and os.environ.get("PPRM_BACKEND", "").strip().lower() != "numpy":
                _warn_fallback("pprm native kernel is not built (no C compiler at install?); using the numpy kernel")
        return ["native", "numpy"] if _native_ok else ["numpy"]


def _warn_fallback(message: str) -> None:
    """Warn, once per process, that the numpy kernel stands in for the native one: one line on stderr.

    A real warning, so that warning filters, ``pytest`` and
    ``logging.captureWarnings`` all see it, with a location that has no
    source line: line 0 of "pprm". The default format then prints
    ``pprm:0: BackendWarning: <message>``, not a second line quoting
    whichever pprm call happened to choose the backend, which tells a user
    nothing. No global hook (``warnings.showwarning``) is replaced.
    """
    warnings.warn_explicit(message, BackendWarning, filename="pprm", lineno=0, module=__name__)


def _select() -> str:
    wanted = os.environ.get("PPRM_BACKEND", "").strip().lower()
    have = available_backends()
    # CI sets PPRM_REQUIRE_NATIVE=1 so that a silently missing build fails loudly.
    if os.environ.get("PPRM_REQUIRE_NATIVE") == "1" and "native" not in have:
        raise BackendError("PPRM_REQUIRE_NATIVE=1 but the native kernel is not built or failed its self-check")
    if wanted and wanted not in have:
        raise BackendError(f"PPRM_BACKEND={wanted!r} is not available here (have: {', '.join(have)})")
    return wanted or have[0]


def backend() -> str:
    """The active kernel backend, chosen and self-checked on the first call.

    ``PPRM_BACKEND`` wins if set; otherwise the fastest of
    :func:`available_backends`. The choice is made once per process, under a
    lock, and then returned from cache; a call that raises caches nothing,
    so the next call decides again.

    Returns:
        ``"native"`` or ``"numpy"``.

    Raises:
        BackendError: ``PPRM_BACKEND`` names a backend that is not available,
            ``PPRM_REQUIRE_NATIVE=1`` and the native kernels are missing or
            failed their self-check, or ``PPRM_THREADS`` is invalid.

    Warning:
        Without ``PPRM_REQUIRE_NATIVE=1`` a missing or failing native build
        falls back to numpy with a :class:`~pprm.errors.BackendWarning`
        (:func:`available_backends`).
    """
    global _selected
    selected = _selected
    if selected is None:
        with _lock:
            if _selected is None:
                _selected = _select()
            selected = _selected
    return selected


if not TYPE_CHECKING:

    def __getattr__(name: str) -> str:
        """Resolve :data:`BACKEND` lazily, by calling :func:`backend`.

        Args:
            name: the attribute asked for.

        Returns:
            The active backend, for ``BACKEND``.

        Raises:
            AttributeError: any other missing name.
            BackendError: as :func:`backend`.
        """
        if name == "BACKEND":
            return backend()
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names, :data:`BACKEND` included, without choosing a backend.

    Returns:
        Sorted attribute names.
    """
    return sorted({*globals(), "BACKEND"})


def plain_mac(pts: np.ndarray, cts: np.ndarray, moduli: tuple[int, ...]) -> np.ndarray:
    """Plaintexts times ciphertexts, summed: ``out[g, s] = sum_b pts[g, b] * cts[b, s] mod q_l``, exactly.

    Coefficient by coefficient, as SEAL's ``multiply_plain`` + ``add`` chain
    computes it on NTT-form residues: ``out[g, s, l, n] = (sum_b
    pts[g, b, l, n] * cts[b, s, l, n]) mod moduli[l]``. The blind profile's
    baby-step/giant-step matrix-vector product runs on it. The first call
    chooses the backend (:func:`backend`).

    Args:
        pts: ``uint64[G, B, L, N]``, C-contiguous, the residues of ``G * B``
            NTT-form plaintexts (may be a read-only ``np.memmap``; it is read once).
        cts: ``uint64[B, S, L, N]``, C-contiguous, the residues of ``B``
            NTT-form ciphertexts of ``S`` polynomials (normally 2).
        moduli: the L primes, each in ``[2, 2**60)``; every residue of prime
            row l must be below ``moduli[l]``.

    Returns:
        ``uint64[G, S, L, N]``: the residues of the G sums, each in ``[0, q_l)``.

    Raises:
        BackendError: a dtype, shape, layout, ``B > 256`` or modulus the
            kernels cannot compute exactly, a residue not below its modulus,
            or no usable backend (:func:`backend`).
    """
    if backend() == "native":
        return kernel_native.plain_mac(pts, cts, moduli)
    return kernel_numpy.plain_mac(pts, cts, moduli)


def multiply_accumulate(block: np.ndarray, weights: np.ndarray, moduli: tuple[int, ...]) -> np.ndarray:
    """Compute ``sum_k weights[k] * block[k] mod q_j`` exactly.

    The first call chooses the backend (:func:`backend`).

    Args:
        block: ``uint64[d, size, L, N]`` residues of ``d`` ciphertexts (may be
            a read-only memory map).
        weights: ``int64[d]`` with ``|w| <= 2**16``.
        moduli: the L primes, each below 2**60.

    Returns:
        ``uint64[size, L, N]``: the residues of the linear combination.

    Raises:
        BackendError: shapes or ranges the kernel cannot compute exactly, or
            no usable backend (:func:`backend`).
    """
    if backend() == "native":
        return kernel_native.multiply_accumulate(block, weights, moduli)
    return kernel_numpy.multiply_accumulate(block, weights, moduli)
