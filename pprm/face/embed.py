"""ArcFace embedding: aligned 112x112 crops to L2-normalised float32 templates.

The recognizer's interface is read from its session: one float input
``(N, 3, 112, 112)`` and one output ``(N, D)``, names and ``D`` as the graph
declares them. Its input normalisation is read from the graph itself (see
:func:`input_normalisation`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from pprm.errors import ModelPackError, ParameterError
from pprm.face.align import CROP_SIZE
from pprm.face.session import describe, open_session, run, shape_of

__all__ = ["Recognizer", "input_normalisation", "ARCFACE_MEAN", "ARCFACE_STD", "RAW_MEAN", "RAW_STD",
           "LEADING_NODES", "check_interface"]

# Input normalisation of ArcFace models trained with insightface's PyTorch
# code (w600k_r50, w600k_mbf, glintr100): RGB, (x - 127.5) / 127.5.
ARCFACE_MEAN = 127.5
ARCFACE_STD = 127.5
# Models converted from MXNet carry that normalisation as leading Sub and Mul
# nodes and take raw 0..255 RGB pixels.
RAW_MEAN = 0.0
RAW_STD = 1.0
# How many leading graph nodes insightface's ArcFace wrapper
# (python-package/insightface/model_zoo/arcface_onnx.py) inspects for them.
LEADING_NODES = 8


def input_normalisation(model: onnx.ModelProto) -> tuple[float, float]:
    """``(mean, std)`` the recognizer expects, by insightface's rule.

    If the first :data:`LEADING_NODES` nodes include both a ``Sub`` and a
    ``Mul``, the graph normalises its input itself: raw pixels (mean 0, std 1).
    Otherwise ``(x - 127.5) / 127.5``. insightface matches node *names*
    (``Sub*``, ``_minus*``, ``Mul*``, ``_mul*``, as the MXNet converter names
    them); the operator type is what those names stand for and does not depend
    on the exporter's naming.

    Args:
        model: the recognizer's graph.

    Returns:
        ``(mean, std)`` with input ``(x - mean) / std``.
    """
    ops = {node.op_type for node in model.graph.node[:LEADING_NODES]}
    if {"Sub", "Mul"} <= ops:
        return RAW_MEAN, RAW_STD
    return ARCFACE_MEAN, ARCFACE_STD


def _read_graph(path: str) -> onnx.ModelProto:
    try:
        # External weights are not needed to read the node list.
        return onnx.load(path, load_external_data=False)
    except (DecodeError, OSError, ValueError) as exc:
        raise ModelPackError(f"{os.path.basename(path)}: the onnx package cannot read its graph "
                             f"({type(exc).__name__})") from None


def check_interface(session: Any, name: str) -> tuple[str, str, int | None, int | None]:
    """Read a recognizer's interface from its session.

    Args:
        session: the ``onnxruntime.InferenceSession``.
        name: the model's file name, for messages.

    Returns:
        ``(input name, output name, fixed batch or None, declared dimension or None)``.

    Raises:
        ModelPackError: not one float ``(N, 3, 112, 112)`` input and one ``(N, D)`` output.
    """
    inputs, outputs = session.get_inputs(), session.get_outputs()
    expected = f"one float (N, 3, {CROP_SIZE}, {CROP_SIZE}) input and one (N, D) output"
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelPackError(f"{name} is not an ArcFace recognizer: it has inputs {describe(inputs)} and "
                             f"outputs {describe(outputs)}, expected {expected}")
    shape, out_shape = shape_of(inputs[0]), shape_of(outputs[0])
    if (len(shape) != 4 or tuple(shape[1:]) != (3, CROP_SIZE, CROP_SIZE) or inputs[0].type != "tensor(float)"
            or len(out_shape) != 2):
        raise ModelPackError(f"{name} is not an ArcFace recognizer: input {describe(inputs)}, output "
                             f"{describe(outputs)}, expected {expected}")
    batch, dim = shape[0], out_shape[1]
    if isinstance(batch, int) and batch < 1:
        raise ModelPackError(f"{name} declares a batch of {batch}")
    if isinstance(dim, int) and dim < 1:
        raise ModelPackError(f"{name} declares an embedding of dimension {dim}")
    return (inputs[0].name, outputs[0].name, batch if isinstance(batch, int) else None,
            dim if isinstance(dim, int) else None)


class Recognizer:
    """An ArcFace-style recognizer, checked against its session.

    Args:
        session: an ``onnxruntime.InferenceSession``.
        name: the model's file name, for messages.
        normalisation: ``(mean, std)``, see :func:`input_normalisation`.

    Raises:
        ModelPackError: not one float input ``(N, 3, 112, 112)`` and one
            output ``(N, D)``.
    """

    def __init__(self, session: Any, name: str, normalisation: tuple[float, float]) -> None:
        self.session = session
        self.name = name
        self.input_name, self.output_name, fixed_batch, dim = check_interface(session, name)
        # A fixed batch is honoured (chunks of exactly that size, the last one
        # padded); a symbolic one takes any batch.
        self.fixed_batch = fixed_batch
        self.mean, self.std = normalisation
        # Every export we know declares the embedding dimension; a symbolic
        # one is measured on a black crop, once.
        self.dim: int = dim if dim is not None else self._run(
            np.zeros((fixed_batch or 1, 3, CROP_SIZE, CROP_SIZE), np.float32)).shape[1]

    def __repr__(self) -> str:
        return f"Recognizer({self.name!r}, dim={self.dim}, mean={self.mean}, std={self.std})"

    @classmethod
    def from_session(cls, session: Any, path: str) -> Recognizer:
        """Check ``session``'s interface and read the normalisation from the graph at ``path``.

        Raises:
            ModelPackError: not an ArcFace recognizer, or the graph is unreadable.
        """
        name = os.path.basename(path)
        # The interface first: a detector handed over as a recognizer fails
        # with that message before its whole graph is parsed again.
        check_interface(session, name)
        return cls(session, name, input_normalisation(_read_graph(path)))

    @classmethod
    def load(cls, path: str, *, threads: int = 2, providers: Sequence[str] | None = None) -> Recognizer:
        """Open ``path`` and :meth:`from_session` it.

        Args:
            path: the .onnx file.
            threads: onnxruntime intra-op threads.
            providers: onnxruntime execution providers, see
                :func:`pprm.face.session.check_providers` (None: CPU).

        Returns:
            The recognizer.

        Raises:
            ModelPackError: unloadable, or not an ArcFace recognizer.
            ParameterError: ``threads`` is not a positive int, or a provider
                is not available.
        """
        return cls.from_session(open_session(path, threads, providers), path)

    def blob(self, crops: np.ndarray) -> np.ndarray:
        """The network input for ``(n, 112, 112, 3)`` uint8 BGR crops: NCHW float32 RGB, normalised."""
        rgb = crops[..., ::-1].astype(np.float32)
        return np.ascontiguousarray(((rgb - self.mean) / self.std).transpose(0, 3, 1, 2))

    def _run(self, blob: np.ndarray) -> np.ndarray:
        out = run(self.session, self.name, [self.output_name], {self.input_name: blob})[0]
        if out.ndim != 2 or out.shape[0] != blob.shape[0]:
            raise ModelPackError(f"{self.name} returned shape {out.shape} for a batch of {blob.shape[0]}")
        return out

    def embed(self, crops: np.ndarray, *, batch_size: int = 8) -> np.ndarray:
        """Templates of aligned crops.

        Args:
            crops: ``(n, 112, 112, 3)`` uint8 BGR, from :func:`pprm.face.align.align_face`.
            batch_size: crops per forward pass (ignored when the model fixes
                its batch size).

        Returns:
            ``(n, D)`` float32, every row of unit L2 norm.

        Raises:
            ModelPackError: the model fails, or returns a non-finite or zero
                embedding (a defective model, not a property of the image).
            ParameterError: bad ``crops`` or ``batch_size``.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ParameterError(f"batch_size must be a positive integer, got {batch_size!r}")
        arr = np.asarray(crops)
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (CROP_SIZE, CROP_SIZE, 3):
            raise ParameterError(f"crops must be (n, {CROP_SIZE}, {CROP_SIZE}, 3) uint8, got {arr.dtype} {arr.shape}")
        n = arr.shape[0]
        out = np.empty((n, self.dim), dtype=np.float32)
        step = self.fixed_batch or batch_size
        for start in range(0, n, step):
            chunk = self.blob(arr[start:start + step])
            real = chunk.shape[0]
            if self.fixed_batch is not None and real < step:
                chunk = np.concatenate([chunk, np.zeros((step - real, *chunk.shape[1:]), np.float32)])
            raw = self._run(chunk)[:real].astype(np.float64)
            if raw.shape[1] != self.dim:
                raise ModelPackError(f"{self.name} returned dimension {raw.shape[1]}, declared {self.dim}")
            norms = np.linalg.norm(raw, axis=1, keepdims=True)
            if not (np.isfinite(norms).all() and (norms > 0).all()):
                raise ModelPackError(f"{self.name} returned a non-finite or zero embedding")
            out[start:start + real] = raw / norms
        return out
