"""Five-point face alignment: a least-squares similarity onto ArcFace's reference landmarks.

ArcFace-family recognizers were trained on 112x112 crops in which the two
eyes, the nose tip and the mouth corners sit at fixed positions; a face must
be warped the same way before embedding, or the template degrades. The warp
is the similarity transform (rotation, uniform scale, translation; no shear
and no mirror) that best maps the detected landmarks onto the reference in
the least-squares sense, in closed form after Umeyama (1991), "Least-squares
estimation of transformation parameters between two point patterns", IEEE
TPAMI 13(4).
"""

from __future__ import annotations

import cv2
import numpy as np

from pprm.errors import AlignmentError, ImageError

__all__ = ["ARCFACE_LANDMARKS_112", "CROP_SIZE", "COLLINEAR_RTOL", "fit_similarity", "apply_affine",
           "alignment_matrix", "align_face", "aligned_crop"]

# Side of the aligned crop, the recognizer input of ArcFace models (w600k_r50,
# w600k_mbf, glintr100 all take 3x112x112).
CROP_SIZE = 112

# Where ArcFace's training crops put the five landmarks, in pixels of the
# 112x112 crop (x right, y down): eye on the image's left, eye on the image's
# right, nose tip, mouth corner on the left, mouth corner on the right. These
# are the published ArcFace alignment targets (``arcface_dst`` in insightface's
# python-package/insightface/utils/face_align.py, the crops of the MS1M and
# WebFace training sets); SCRFD's keypoints come in the same order.
ARCFACE_LANDMARKS_112 = np.array(
    [[38.2946, 51.6963],
     [73.5318, 51.5014],
     [56.0252, 71.7366],
     [41.5493, 92.3655],
     [70.7299, 92.2041]], dtype=np.float64)
ARCFACE_LANDMARKS_112.flags.writeable = False

# A point set whose smaller singular value (after centring) is below this
# fraction of the larger one is treated as collinear: the rotation of the fit
# is then decided by rounding noise. Real faces are nowhere near: the
# reference landmarks themselves have a ratio of 0.795, and a detector's
# landmarks on a turned head lose a factor of a few, not of a million.
COLLINEAR_RTOL = 1e-6


def _check_points(points: np.ndarray, what: str, rtol: float) -> None:
    if not np.isfinite(points).all():
        raise AlignmentError(f"{what} landmarks are not finite")
    spread = np.linalg.svd(points - points.mean(axis=0), compute_uv=False)
    if spread[0] == 0.0 or spread[1] <= rtol * spread[0]:
        raise AlignmentError(f"{what} landmarks are collinear or coincide; no similarity transform is determined")


def fit_similarity(src: np.ndarray, dst: np.ndarray, *, rtol: float = COLLINEAR_RTOL) -> np.ndarray:
    """The similarity transform that maps ``src`` onto ``dst`` with least squared error.

    Umeyama's closed form: with both sets centred, the SVD of their cross
    covariance ``U S V^T`` gives the rotation ``U D V^T``; ``D`` flips the last
    axis when ``det(U) det(V) < 0``, the case where the unconstrained optimum
    would be a reflection, so the result is always a proper rotation (a mirror
    image is a different face to a recognizer). The scale is
    ``trace(S D) / var(src)`` and the translation maps centroid to centroid.

    Args:
        src: ``(n, 2)`` points, n >= 2 (the detected landmarks).
        dst: ``(n, 2)`` points (the reference landmarks).
        rtol: collinearity tolerance, see :data:`COLLINEAR_RTOL`.

    Returns:
        ``(2, 3)`` float64 matrix ``[sR | t]`` with ``dst ~ sR @ src + t``,
        ``det(R) = +1``, ``s > 0``: the form ``cv2.warpAffine`` takes.

    Raises:
        AlignmentError: shapes differ or are not ``(n, 2)`` with n >= 2, a
            point is not finite, or either set is collinear or coincident.
    """
    a = np.asarray(src, dtype=np.float64)
    b = np.asarray(dst, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2 or a.shape[0] < 2 or a.shape != b.shape:
        raise AlignmentError(f"landmarks must be two (n, 2) arrays with n >= 2, got {a.shape} and {b.shape}")
    _check_points(a, "source", rtol)
    _check_points(b, "target", rtol)
    n = a.shape[0]
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    ca, cb = a - mean_a, b - mean_b
    u, s, vt = np.linalg.svd(cb.T @ ca / n)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rotation = u @ np.diag(d) @ vt
    scale = float(s @ d) / float((ca * ca).sum() / n)
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mean_b - scale * rotation @ mean_a
    return matrix


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``points @ A^T + t`` for a ``(2, 3)`` matrix ``[A | t]``; ``(n, 2)`` float64."""
    m = np.asarray(matrix, dtype=np.float64)
    return np.asarray(points, dtype=np.float64) @ m[:, :2].T + m[:, 2]


def alignment_matrix(landmarks: np.ndarray) -> np.ndarray:
    """The ``(2, 3)`` warp taking five detected landmarks onto :data:`ARCFACE_LANDMARKS_112`.

    Raises:
        AlignmentError: not five finite, non-collinear points.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != ARCFACE_LANDMARKS_112.shape:
        raise AlignmentError(f"expected 5 landmarks of shape (5, 2), got {pts.shape}")
    return fit_similarity(pts, ARCFACE_LANDMARKS_112)


def align_face(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Warp the face at ``landmarks`` to a 112x112 ArcFace crop.

    Bilinear interpolation, black outside the image (faces at the border
    keep their geometry; the recognizers were trained on crops padded so).

    Args:
        image: HxWx3 uint8 BGR.
        landmarks: ``(5, 2)`` in image pixels, SCRFD's order.

    Returns:
        ``(112, 112, 3)`` uint8 BGR.

    Raises:
        AlignmentError: degenerate landmarks.
    """
    matrix = alignment_matrix(landmarks)
    crop = cv2.warpAffine(image, matrix, (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return np.asarray(crop, dtype=np.uint8)


def aligned_crop(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Take an image that is already an ArcFace-aligned crop, as the recognizer's 112x112 input.

    For inputs that were aligned elsewhere (a dataset of aligned crops, a
    crop written by :func:`align_face`): no detection, no alignment. A face
    filling a 112x112 crop is too large and too tight for SCRFD to find, so
    such an image cannot go through the full pipeline.

    Accepted: exactly 112x112, or a square whose side is a multiple of 112
    (224x224, 336x336, ...). The latter is what insightface's alignment
    (``estimate_norm`` with ``image_size`` a multiple of 112) produces: the
    same reference landmarks scaled by the integer factor, so an area-average
    downscale gives the 112x112 crop. Anything else (a 128x128 crop is
    aligned to shifted landmarks; a photo is not aligned at all) is refused
    rather than resized into a template of the wrong geometry.

    Args:
        image: HxWx3 uint8 BGR (as :func:`pprm.face.image.load_image` returns).
        name: how to call the image in the message.

    Returns:
        ``(112, 112, 3)`` uint8 BGR.

    Raises:
        ImageError: not a 112x112 crop or a square of a multiple of 112.
    """
    height, width = image.shape[:2]
    if height != width or height % CROP_SIZE:
        raise ImageError(f"{name} is {width}x{height}, not an aligned {CROP_SIZE}x{CROP_SIZE} crop (nor a square "
                         f"whose side is a multiple of {CROP_SIZE}); without --aligned (aligned=True) its face is "
                         "detected and aligned first")
    if height == CROP_SIZE:
        return np.ascontiguousarray(image, dtype=np.uint8)
    # INTER_AREA at an integer factor is the exact mean of each k x k block.
    crop = cv2.resize(image, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_AREA)
    return np.asarray(crop, dtype=np.uint8)
