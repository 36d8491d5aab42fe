"""pprm.face.align: the Umeyama similarity fit and the 112x112 warp.

The fit is checked against an independent oracle: in the plane, the best
proper similarity has the closed form ``z -> a z + b`` over complex numbers
with ``a = sum(conj(u) v) / sum(|u|^2)`` for the centred point sets ``u``,
``v``, which can never be a reflection. Umeyama's SVD form must agree with it
on any input, mirrored ones included.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cv2", reason='the face extra is not installed (pip install -e ".[dev,face]")')
pytest.importorskip("onnxruntime", reason='the face extra is not installed (pip install -e ".[dev,face]")')

import cv2
from hypothesis import assume, given
from hypothesis import strategies as st

from pprm.errors import AlignmentError, ImageError
from pprm.face.align import (
    ARCFACE_LANDMARKS_112,
    CROP_SIZE,
    align_face,
    aligned_crop,
    alignment_matrix,
    apply_affine,
    fit_similarity,
)


def similarity(scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])


def complex_oracle(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    zs = src[:, 0] + 1j * src[:, 1]
    zd = dst[:, 0] + 1j * dst[:, 1]
    u, v = zs - zs.mean(), zd - zd.mean()
    a = np.sum(np.conj(u) * v) / np.sum(np.abs(u) ** 2)
    b = zd.mean() - a * zs.mean()
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def test_recovers_a_known_similarity_exactly():
    m = similarity(2.5, np.deg2rad(30.0), 17.0, -4.0)
    src = ARCFACE_LANDMARKS_112 * 1.7 + 3.0
    got = fit_similarity(src, apply_affine(m, src))
    np.testing.assert_allclose(got, m, rtol=0, atol=1e-12)


def test_identity_on_the_reference():
    np.testing.assert_allclose(alignment_matrix(ARCFACE_LANDMARKS_112), similarity(1, 0, 0, 0), atol=1e-12)


def test_mirrored_points_give_a_proper_rotation_not_a_reflection():
    src = ARCFACE_LANDMARKS_112.copy()
    mirrored = src * np.array([-1.0, 1.0]) + np.array([112.0, 0.0])  # exact mirror image
    m = fit_similarity(src, mirrored)
    linear = m[:, :2]
    assert np.linalg.det(linear) > 0
    # a pure rotation-and-scale: [[a, -b], [b, a]]
    assert linear[0, 0] == pytest.approx(linear[1, 1], abs=1e-12)
    assert linear[0, 1] == pytest.approx(-linear[1, 0], abs=1e-12)
    # the mirror cannot be fitted exactly by a similarity
    assert np.abs(apply_affine(m, src) - mirrored).max() > 1.0
    np.testing.assert_allclose(m, complex_oracle(src, mirrored), atol=1e-10)


@pytest.mark.parametrize("points", [
    np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]]),       # collinear
    np.array([[5.0, 5.0]] * 5),                                                      # coincident
    np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 1e-9], [30.0, 0.0], [40.0, 0.0]]),    # collinear up to rounding
])
def test_degenerate_source_raises_a_typed_error(points):
    with pytest.raises(AlignmentError, match="collinear or coincide"):
        fit_similarity(points, ARCFACE_LANDMARKS_112)
    with pytest.raises(ValueError):  # AlignmentError is a ValueError too
        alignment_matrix(points)


def test_degenerate_target_raises():
    with pytest.raises(AlignmentError, match="target"):
        fit_similarity(ARCFACE_LANDMARKS_112, np.zeros((5, 2)))


@pytest.mark.parametrize(("src", "dst"), [
    (np.zeros((5, 3)), np.zeros((5, 3))),
    (np.zeros((1, 2)), np.zeros((1, 2))),
    (np.zeros((5, 2)), np.zeros((4, 2))),
])
def test_bad_shapes_raise(src, dst):
    with pytest.raises(AlignmentError, match="n >= 2"):
        fit_similarity(src, dst)


def test_non_finite_landmarks_raise():
    bad = ARCFACE_LANDMARKS_112.copy()
    bad[2, 0] = np.nan
    with pytest.raises(AlignmentError, match="not finite"):
        alignment_matrix(bad)
    with pytest.raises(AlignmentError, match=r"\(5, 2\)"):
        alignment_matrix(ARCFACE_LANDMARKS_112[:4])


coords = st.floats(-200.0, 200.0, allow_nan=False)


@given(points=st.lists(st.tuples(coords, coords), min_size=3, max_size=8),
       scale=st.floats(0.05, 20.0), angle=st.floats(-np.pi, np.pi),
       tx=st.floats(-500.0, 500.0), ty=st.floats(-500.0, 500.0))
def test_fit_of_transformed_points_round_trips(points, scale, angle, tx, ty):
    src = np.array(points)
    spread = np.linalg.svd(src - src.mean(axis=0), compute_uv=False)
    assume(spread[1] > 0.05 * spread[0] and spread[1] > 1.0)  # well-conditioned point sets
    m = similarity(scale, angle, tx, ty)
    dst = apply_affine(m, src)
    got = fit_similarity(src, dst)
    np.testing.assert_allclose(got[:, :2], m[:, :2], atol=1e-8 * max(1.0, scale))
    np.testing.assert_allclose(apply_affine(got, src), dst, atol=1e-7 * max(1.0, scale) * 500)
    # and back: the fit of dst onto src inverts it
    back = fit_similarity(dst, src)
    np.testing.assert_allclose(apply_affine(back, dst), src, atol=1e-6 * 500)


@given(points=st.lists(st.tuples(coords, coords), min_size=3, max_size=8),
       targets=st.lists(st.tuples(coords, coords), min_size=8, max_size=8))
def test_matches_the_complex_least_squares_oracle(points, targets):
    src = np.array(points)
    dst = np.array(targets[:len(points)])
    for pts in (src, dst):
        spread = np.linalg.svd(pts - pts.mean(axis=0), compute_uv=False)
        assume(spread[1] > 0.05 * spread[0] and spread[1] > 1.0)
    got = fit_similarity(src, dst)
    want = complex_oracle(src, dst)
    np.testing.assert_allclose(got, want, atol=1e-8 * max(1.0, np.abs(want).max()))
    assert np.linalg.det(got[:, :2]) > 0


def test_align_face_undoes_a_known_warp():
    """A 112x112 'face' warped into a photo by a known similarity comes back from its landmarks."""
    yy, xx = np.mgrid[0:CROP_SIZE, 0:CROP_SIZE].astype(np.float64)
    # A smooth texture: bilinear resampling errors stay below a grey level or two.
    face = np.stack([127 + 100 * np.sin(xx / 9.0), 127 + 100 * np.cos(yy / 7.0),
                     127 + 60 * np.sin((xx + yy) / 11.0)], axis=-1).astype(np.uint8)
    placed = similarity(2.2, np.deg2rad(-14.0), 180.0, 95.0)  # crop -> photo
    photo = cv2.warpAffine(face, placed, (520, 480), flags=cv2.INTER_LINEAR)
    landmarks = apply_affine(placed, ARCFACE_LANDMARKS_112)
    np.testing.assert_allclose(alignment_matrix(landmarks), cv2.invertAffineTransform(placed), atol=1e-9)
    crop = align_face(photo, landmarks)
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3) and crop.dtype == np.uint8
    inner = (slice(4, -4), slice(4, -4))  # the border row mixes in black from outside the source
    diff = np.abs(crop[inner].astype(int) - face[inner].astype(int))
    assert diff.max() <= 6 and diff.mean() < 1.0, (diff.max(), diff.mean())


# -- already aligned crops ---------------------------------------------------------------------

def test_aligned_crop_takes_112_as_it_is():
    crop = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    out = aligned_crop(crop)
    assert out.dtype == np.uint8 and out.shape == (112, 112, 3)
    np.testing.assert_array_equal(out, crop)


@pytest.mark.parametrize("factor", [2, 3])
def test_aligned_crop_averages_a_multiple_of_112_down(factor):
    # insightface aligns to 112k x 112k with the reference landmarks scaled by k:
    # each k x k block of such a crop is one pixel of the 112x112 crop.
    crop = np.random.default_rng(factor).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    big = np.repeat(np.repeat(crop, factor, axis=0), factor, axis=1)
    np.testing.assert_array_equal(aligned_crop(big), crop)
    noisy = big.astype(np.int16) + np.random.default_rng(9).integers(-2, 3, big.shape)
    noisy = np.clip(noisy, 0, 255).astype(np.uint8)
    block_means = noisy.reshape(112, factor, 112, factor, 3).mean(axis=(1, 3))
    assert np.abs(aligned_crop(noisy).astype(float) - block_means).max() <= 0.5 + 1e-9


@pytest.mark.parametrize(("shape", "size"), [((113, 112, 3), "112x113"), ((112, 224, 3), "224x112"),
                                              ((128, 128, 3), "128x128"), ((480, 640, 3), "640x480"),
                                              ((56, 56, 3), "56x56")])
def test_aligned_crop_refuses_other_sizes(shape, size):
    with pytest.raises(ImageError) as info:
        aligned_crop(np.zeros(shape, np.uint8), "image crops/x.png")
    msg = str(info.value)
    assert msg.startswith(f"image crops/x.png is {size}, not an aligned 112x112 crop") and "\n" not in msg
