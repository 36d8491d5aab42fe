"""SCRFD face detection: letterbox, one forward pass, anchor decoding, NMS.

SCRFD (Guo et al., "Sample and Computation Redistribution for Efficient Face
Detection", 2021) is an anchor-point detector over a feature pyramid. For
every pyramid level (stride ``s``) and every feature-map cell it predicts,
per anchor: a face score, four distances from the cell's anchor point to the
box sides, and ten offsets to the five landmarks, all in units of ``s``.

The exported ONNX graphs return one tensor per (kind, level): ``(n, 1)``
scores, ``(n, 4)`` box distances, ``(n, 10)`` landmark offsets, optionally
with a leading batch axis. Which output is which is derived here from the
last dimension (kind) and the row count ``n = H_s * W_s * anchors`` (level),
never from output names or positions.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from pprm.errors import ModelPackError, ParameterError
from pprm.face.session import describe, open_session, run, shape_of

__all__ = ["Detection", "Detector", "anchor_centres", "distance2bbox", "distance2kps", "nms", "letterbox",
           "box_area", "FIRST_STRIDE", "DET_MEAN", "DET_STD", "NMS_IOU"]

# SCRFD's pyramid starts at stride 8 and doubles per level: (8, 16, 32) for
# the three-level models in insightface's packs (det_500m, det_10g; 6 or 9
# outputs), (8, 16, 32, 64, 128) for five-level exports (10 or 15 outputs),
# as insightface's SCRFD wrapper (python-package/insightface/model_zoo/scrfd.py,
# ``_feat_stride_fpn``) decodes them.
FIRST_STRIDE = 8

# Input normalisation of SCRFD: RGB, (x - 127.5) / 128 (insightface's SCRFD
# wrapper: ``input_mean = 127.5``, ``input_std = 128.0``, ``swapRB=True``).
DET_MEAN = 127.5
DET_STD = 128.0

# Greedy NMS overlap limit: insightface's SCRFD default (``nms_thresh = 0.4``).
NMS_IOU = 0.4

# Output kinds by their last dimension: score, box distances (left, top,
# right, bottom), landmark offsets (x, y for five points).
_KINDS = {1: "score", 4: "bbox", 10: "kps"}


class _KeypointsMissing(ModelPackError):
    """An SCRFD detector without the keypoint head: a detector, but useless for alignment.

    Private: callers see a :class:`ModelPackError`; model discovery uses the
    subclass to name such a file instead of passing over it silently.
    """


@dataclass(frozen=True)
class Detection:
    """One detected face, in pixels of the original image.

    Attributes:
        bbox: ``(4,)`` float32 ``x1, y1, x2, y2``.
        score: detector confidence in [0, 1].
        landmarks: ``(5, 2)`` float32; eye on the image's left, eye on the
            right, nose tip, mouth corner on the left, on the right.
    """

    bbox: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        """Box area in square pixels (0 for an inverted box)."""
        return box_area(self.bbox)


def box_area(bbox: np.ndarray) -> float:
    """Area of an ``x1, y1, x2, y2`` box; 0 if it is empty or inverted."""
    x1, y1, x2, y2 = (float(v) for v in bbox)
    return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def anchor_centres(height: int, width: int, stride: int, anchors: int) -> np.ndarray:
    """Anchor points of one pyramid level, in the row order of the detector's outputs.

    SCRFD places its anchor points at the top-left corner of each cell
    (``(x * s, y * s)``, offset 0), and its head is flattened cell by cell in
    row-major order with the anchors of one cell adjacent.

    Args:
        height: feature-map rows.
        width: feature-map columns.
        stride: the level's stride in input pixels.
        anchors: anchors per cell.

    Returns:
        ``(height * width * anchors, 2)`` float32 ``x, y``.
    """
    ys, xs = np.mgrid[0:height, 0:width]
    cells = np.stack([xs.ravel(), ys.ravel()], axis=1) * stride
    return np.repeat(cells, anchors, axis=0).astype(np.float32)


def distance2bbox(points: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Boxes from anchor points and distances to the four sides.

    Args:
        points: ``(n, 2)`` anchor points ``x, y``.
        distances: ``(n, 4)`` distances to the left, top, right and bottom
            side, in pixels (already multiplied by the stride).

    Returns:
        ``(n, 4)`` float32 ``x1, y1, x2, y2``.
    """
    p = np.asarray(points, dtype=np.float32)
    d = np.asarray(distances, dtype=np.float32)
    return np.stack([p[:, 0] - d[:, 0], p[:, 1] - d[:, 1], p[:, 0] + d[:, 2], p[:, 1] + d[:, 3]], axis=1)


def distance2kps(points: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Landmarks from anchor points and offsets.

    Args:
        points: ``(n, 2)`` anchor points ``x, y``.
        offsets: ``(n, 2k)`` offsets ``dx0, dy0, dx1, dy1, ...`` in pixels.

    Returns:
        ``(n, k, 2)`` float32 landmark positions.
    """
    p = np.asarray(points, dtype=np.float32)
    o = np.asarray(offsets, dtype=np.float32)
    return o.reshape(o.shape[0], -1, 2) + p[:, None, :]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression.

    The best-scoring remaining box is kept and every box overlapping it by
    more than ``iou_threshold`` (intersection over union) is dropped. Boxes
    are continuous coordinates, as SCRFD regresses them: areas are
    ``(x2 - x1) * (y2 - y1)``, without the ``+1`` of pixel-inclusive
    conventions. Equal scores keep the earlier box.

    Args:
        boxes: ``(n, 4)`` ``x1, y1, x2, y2``.
        scores: ``(n,)``.
        iou_threshold: overlap above which a box is suppressed.

    Returns:
        Indices of the kept boxes, best score first.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    areas = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(b[i, 2], b[rest, 2]) - np.maximum(b[i, 0], b[rest, 0]), 0, None)
        h = np.clip(np.minimum(b[i, 3], b[rest, 3]) - np.maximum(b[i, 1], b[rest, 1]), 0, None)
        inter = w * h
        union = areas[i] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.intp)


def letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float, float]:
    """Resize keeping the aspect ratio into a black ``size`` canvas, top-left aligned.

    Bilinear, as insightface's SCRFD wrapper resizes (``cv2.resize``'s
    default) and mmcv's ``imresize`` did in SCRFD's training pipeline.

    Args:
        image: HxWx3 uint8.
        size: canvas ``(width, height)``.

    Returns:
        ``(canvas, sx, sy)``: the canvas, and the factors by which image x and
        y coordinates were multiplied (divide detections by them to map back).
    """
    width, height = size
    h, w = image.shape[:2]
    ratio = min(width / w, height / h)
    new_w = min(width, max(1, round(w * ratio)))
    new_h = min(height, max(1, round(h * ratio)))
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return canvas, new_w / w, new_h / h


class Detector:
    """An SCRFD detector with five-point keypoints, checked against its session.

    Args:
        session: an ``onnxruntime.InferenceSession``.
        name: the model's file name, for messages.

    Raises:
        ModelPackError: the session does not have SCRFD's interface: one
            image input ``(N, 3, H, W)``, and score, box and keypoint outputs
            (last dimensions 1, 4, 10) for the same number of levels.
    """

    def __init__(self, session: Any, name: str) -> None:
        self.session = session
        self.name = name
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1:
            raise ModelPackError(f"{name} is not an SCRFD detector: it has {len(inputs)} inputs ({describe(inputs)})")
        shape = shape_of(inputs[0])
        if len(shape) != 4 or shape[1] != 3 or inputs[0].type != "tensor(float)":
            raise ModelPackError(f"{name} is not an SCRFD detector: input {describe(inputs)} is not a float "
                                 "(N, 3, H, W) image")
        if isinstance(shape[0], int) and shape[0] != 1:
            raise ModelPackError(f"{name} takes a fixed batch of {shape[0]} images; SCRFD runs one at a time")
        self.input_name: str = inputs[0].name
        # (width, height) when the graph fixes it, else any multiple of the largest stride.
        self.fixed_size: tuple[int, int] | None = (
            (shape[3], shape[2]) if isinstance(shape[2], int) and isinstance(shape[3], int) else None)
        self.output_names: list[str] = [o.name for o in outputs]
        kinds: list[str] = []
        for o in outputs:
            dims = shape_of(o)
            last = dims[-1] if dims else None
            if len(dims) not in (2, 3) or not isinstance(last, int) or last not in _KINDS:
                raise ModelPackError(f"{name} is not an SCRFD detector: output {describe([o])} is not a score, "
                                     "box or keypoint tensor (last dimension 1, 4 or 10)")
            kinds.append(_KINDS[last])
        self._kinds = kinds
        counts = {k: kinds.count(k) for k in _KINDS.values()}
        if counts["score"] == 0 or counts["score"] != counts["bbox"]:
            raise ModelPackError(f"{name} is not an SCRFD detector: outputs {describe(outputs)} do not pair "
                                 "scores with boxes per pyramid level")
        if counts["kps"] != counts["score"]:
            raise _KeypointsMissing(f"{name} is an SCRFD detector without keypoint outputs; alignment needs the "
                                 "five-point variant (bnkps/kps, as in insightface's packs)")
        self.levels = counts["score"]
        self.strides = tuple(FIRST_STRIDE * 2**i for i in range(self.levels))

    def __repr__(self) -> str:
        return f"Detector({self.name!r}, levels={self.levels})"

    @classmethod
    def load(cls, path: str, *, threads: int = 2, providers: Sequence[str] | None = None) -> Detector:
        """Open ``path`` and check its interface; see the class.

        Args:
            path: the .onnx file.
            threads: onnxruntime intra-op threads.
            providers: onnxruntime execution providers, see
                :func:`pprm.face.session.check_providers` (None: CPU).

        Returns:
            The detector.

        Raises:
            ModelPackError: unloadable, or not an SCRFD detector with keypoints.
            ParameterError: bad ``threads`` or ``providers``.
        """
        return cls(open_session(path, threads, providers), os.path.basename(path))

    def check_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """Validate a detection input size ``(width, height)`` for this model.

        Raises:
            ParameterError: the model fixes another size, or a side is not a
                positive multiple of the largest stride (the anchor grid would
                not tile it).
        """
        width, height = (int(v) for v in size)
        if self.fixed_size is not None and (width, height) != self.fixed_size:
            raise ParameterError(f"{self.name} takes a fixed {self.fixed_size[0]}x{self.fixed_size[1]} input; "
                                 f"set the detection size to ({self.fixed_size[0]}, {self.fixed_size[1]})")
        step = self.strides[-1]
        if width < step or height < step or width % step or height % step:
            raise ParameterError(f"detection size must be positive multiples of {step}, got {width}x{height}")
        return width, height

    def _levels(self, arrays: list[np.ndarray], size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
        """Per level, ``(stride, score index, bbox index, kps index)`` from the output row counts."""
        width, height = size
        by_kind: dict[str, list[tuple[int, int]]] = {k: [] for k in _KINDS.values()}
        for idx, (kind, arr) in enumerate(zip(self._kinds, arrays, strict=True)):
            by_kind[kind].append((arr.shape[0], idx))
        for entries in by_kind.values():
            # The finest level has the most rows.
            entries.sort(key=lambda e: -e[0])
        levels = []
        for lvl, stride in enumerate(self.strides):
            rows = {kind: by_kind[kind][lvl][0] for kind in by_kind}
            cells = math.ceil(height / stride) * math.ceil(width / stride)
            n = rows["score"]
            if len(set(rows.values())) != 1 or n % cells or n == 0:
                raise ModelPackError(f"{self.name}: output rows {sorted(rows.values())} do not match SCRFD's "
                                     f"anchor grid at stride {stride} for a {width}x{height} input")
            levels.append((stride, by_kind["score"][lvl][1], by_kind["bbox"][lvl][1], by_kind["kps"][lvl][1]))
        anchors = {by_kind["score"][lvl][0] // (math.ceil(height / s) * math.ceil(width / s))
                   for lvl, s in enumerate(self.strides)}
        if len(anchors) != 1:
            raise ModelPackError(f"{self.name}: pyramid levels disagree on the anchors per cell")
        return levels

    def detect(self, image: np.ndarray, *, size: tuple[int, int] = (640, 640), threshold: float = 0.5,
               nms_iou: float = NMS_IOU) -> list[Detection]:
        """Faces in ``image``, best score first.

        Args:
            image: HxWx3 uint8 BGR.
            size: detection input ``(width, height)``; the image is letterboxed into it.
            threshold: minimum face score.
            nms_iou: NMS overlap limit, see :func:`nms`.

        Returns:
            Detections in original image pixels.

        Raises:
            ModelPackError: the model fails or its outputs do not decode.
            ParameterError: bad ``size``.
        """
        size = self.check_size(size)
        canvas, sx, sy = letterbox(image, size)
        blob = ((canvas[:, :, ::-1].astype(np.float32) - DET_MEAN) / DET_STD).transpose(2, 0, 1)[None]
        arrays = run(self.session, self.name, self.output_names,
                     {self.input_name: np.ascontiguousarray(blob)})
        # Batched exports return (1, n, c), the others (n, c).
        arrays = [a[0] if a.ndim == 3 else a for a in arrays]
        boxes, scores, points = [], [], []
        for stride, si, bi, ki in self._levels(arrays, size):
            score = arrays[si].reshape(-1)
            keep = np.flatnonzero(score >= threshold)
            if keep.size == 0:
                continue
            cells = (math.ceil(size[1] / stride), math.ceil(size[0] / stride))
            centres = anchor_centres(cells[0], cells[1], stride, score.size // (cells[0] * cells[1]))[keep]
            boxes.append(distance2bbox(centres, arrays[bi][keep] * stride))
            points.append(distance2kps(centres, arrays[ki][keep] * stride))
            scores.append(score[keep])
        if not scores:
            return []
        scale = np.array([sx, sy], dtype=np.float32)
        all_boxes = np.concatenate(boxes) / np.tile(scale, 2)
        all_points = np.concatenate(points) / scale
        all_scores = np.concatenate(scores)
        return [Detection(bbox=all_boxes[i].astype(np.float32), score=float(all_scores[i]),
                          landmarks=all_points[i].astype(np.float32))
                for i in nms(all_boxes, all_scores, nms_iou)]
