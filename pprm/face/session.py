"""onnxruntime sessions for the face models: chosen execution providers, bounded threads, typed errors.

The execution providers default to onnxruntime's CPU provider
(:data:`DEFAULT_PROVIDERS`); a caller may name others in order of preference
(``CUDAExecutionProvider``, ``OpenVINOExecutionProvider``, ...), each one
checked against what the installed onnxruntime build offers
(:func:`check_providers`).

Every interface fact the rest of :mod:`pprm.face` relies on (input and output
names, ranks, fixed or symbolic dimensions) is read from the session here,
never assumed from a file name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from pprm.errors import ModelPackError, ParameterError

__all__ = ["ORT_ERRORS", "Dim", "DEFAULT_PROVIDERS", "open_session", "run", "shape_of", "describe", "check_threads",
           "check_providers"]

# onnxruntime's pybind errors (Fail, InvalidProtobuf, InvalidGraph, ...) derive
# from Exception directly, not from RuntimeError or ValueError, and the set
# grows between releases; collect whatever this release defines.
ORT_ERRORS: tuple[type[Exception], ...] = tuple(
    v for v in vars(_ort_state).values() if isinstance(v, type) and issubclass(v, Exception))

# A tensor dimension as a session reports it: an int when fixed, else a
# symbolic name (str) or None.
Dim = int | str | None

# onnxruntime execution providers unless the caller names others: the CPU
# provider, which every onnxruntime build has.
DEFAULT_PROVIDERS: tuple[str, ...] = ("CPUExecutionProvider",)


def check_threads(threads: int) -> int:
    """Validate an intra-op thread count.

    Raises:
        ParameterError: not a positive int.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ParameterError(f"threads must be a positive integer, got {threads!r}")
    return threads


def check_providers(providers: Sequence[str] | None) -> tuple[str, ...]:
    """Validate onnxruntime execution providers against the installed build.

    Args:
        providers: provider names in order of preference (onnxruntime runs
            each node on the first one that supports it), e.g.
            ``("CUDAExecutionProvider", "CPUExecutionProvider")``; None for
            :data:`DEFAULT_PROVIDERS`. A name given twice counts once.

    Returns:
        The providers, in order, without repeats.

    Raises:
        ParameterError: empty, not a sequence of str, or a name that
            ``onnxruntime.get_available_providers()`` does not list (the
            message lists the ones it does).
    """
    if providers is None:
        return DEFAULT_PROVIDERS
    if isinstance(providers, str) or not all(isinstance(p, str) for p in providers):
        raise ParameterError(f"providers must be a sequence of provider names, got {providers!r}")
    chosen = tuple(dict.fromkeys(p.strip() for p in providers))
    if not chosen or "" in chosen:
        raise ParameterError(f"providers must name at least one execution provider, got {providers!r}")
    available = list(ort.get_available_providers())
    unknown = [p for p in chosen if p not in available]
    if unknown:
        raise ParameterError(f"onnxruntime execution provider {unknown[0]!r} is not available in this onnxruntime "
                             f"installation; available: {', '.join(available)}")
    return chosen


def open_session(path: str, threads: int, providers: Sequence[str] | None = None) -> Any:
    """An onnxruntime session on ``providers`` with ``threads`` intra-op threads.

    Args:
        path: the .onnx file.
        threads: intra-op threads (inter-op parallelism stays off: the graphs
            are chains of convolutions, and one bounded pool is what a caller
            budgeting cores expects).
        providers: execution providers in order of preference, see
            :func:`check_providers`; None for :data:`DEFAULT_PROVIDERS` (CPU).

    Returns:
        The ``onnxruntime.InferenceSession``.

    Raises:
        ModelPackError: the file is missing or onnxruntime cannot load it
            (on these providers).
        ParameterError: ``threads`` is not a positive int, or a provider is
            not available.
    """
    check_threads(threads)
    chosen = check_providers(providers)
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise ModelPackError(f"model file {path} is missing")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # No busy-waiting between runs: the pipeline alternates between two
    # sessions (detector, recognizer), and a pool left spinning after its run
    # takes the cores the other one needs. Measured on 2 cores, 2 threads
    # each: 15-20 ms per face instead of 20-44 ms, and far steadier.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Errors only: insightface's exports declare a fixed batch of 1 on outputs
    # whose real batch is dynamic, and onnxruntime warns about that on every
    # batched run.
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(path, sess_options=options, providers=list(chosen))
    except ORT_ERRORS as exc:
        reason = " ".join(str(exc).split())[:200]
        on = "" if chosen == DEFAULT_PROVIDERS else f" on {', '.join(chosen)}"
        raise ModelPackError(f"{name} is not a loadable ONNX model{on}: {reason}") from None


def run(session: Any, name: str, outputs: Sequence[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``session.run`` with onnxruntime's errors turned into :class:`ModelPackError`.

    Args:
        session: the session.
        name: the model's file name, for the message.
        outputs: output names to fetch.
        feeds: input name -> array.

    Returns:
        The output arrays, in the order of ``outputs``.

    Raises:
        ModelPackError: the model failed on this input.
    """
    try:
        return [np.asarray(a) for a in session.run(list(outputs), feeds)]
    except ORT_ERRORS as exc:
        reason = " ".join(str(exc).split())[:200]
        raise ModelPackError(f"{name} failed to run: {reason}") from None


def shape_of(arg: Any) -> tuple[Dim, ...]:
    """The shape of a session input or output, symbolic dimensions as str or None."""
    shape = arg.shape
    if shape is None:  # rank unknown
        return ()
    return tuple(d if isinstance(d, int | str) or d is None else None for d in shape)


def _dim(d: Dim) -> str:
    return str(d) if isinstance(d, int) else "?"


def describe(args: Sequence[Any]) -> str:
    """``name[d0,d1,...]`` for each session input or output (``?`` for a symbolic dimension)."""
    return ", ".join(f"{a.name}[{','.join(_dim(d) for d in shape_of(a))}]" for a in args)
