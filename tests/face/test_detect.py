"""pprm.face.detect: SCRFD decoding (anchors, distances, NMS, letterbox) and the detector through onnxruntime.

The end-to-end cases use the synthetic SCRFD-shaped detector of ``_face``:
its planted detections are known exactly, its output names are random and
its output order shuffled, so decoding them right proves that outputs are
grouped by shape, not by name or position.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason='the face extra is not installed (pip install -e ".[dev,face]")')
pytest.importorskip("onnxruntime", reason='the face extra is not installed (pip install -e ".[dev,face]")')

from pprm.errors import ModelPackError, ParameterError
from pprm.face.detect import Detector, anchor_centres, box_area, distance2bbox, distance2kps, letterbox, nms
from tests.face.support import PLANTED, synthetic_detector


def test_anchor_centres_known_answer():
    got = anchor_centres(2, 3, 8, 2)
    want = np.array([[0, 0], [0, 0], [8, 0], [8, 0], [16, 0], [16, 0],
                     [0, 8], [0, 8], [8, 8], [8, 8], [16, 8], [16, 8]], dtype=np.float32)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float32
    # one anchor per cell: plain row-major grid
    np.testing.assert_array_equal(anchor_centres(1, 2, 32, 1), [[0, 0], [32, 0]])


def test_distance2bbox_known_answer():
    points = np.array([[100.0, 50.0], [0.0, 0.0]])
    distances = np.array([[10.0, 20.0, 30.0, 40.0], [1.0, 2.0, 3.0, 4.0]])
    np.testing.assert_array_equal(distance2bbox(points, distances), [[90, 30, 130, 90], [-1, -2, 3, 4]])


def test_distance2kps_known_answer():
    points = np.array([[10.0, 20.0]])
    offsets = np.array([[1.0, 2.0, -3.0, -4.0, 0.0, 0.0, 5.0, 6.0, 7.0, 8.0]])
    got = distance2kps(points, offsets)
    assert got.shape == (1, 5, 2)
    np.testing.assert_array_equal(got[0], [[11, 22], [7, 16], [10, 20], [15, 26], [17, 28]])


def test_nms_known_answers():
    boxes = np.array([
        [0, 0, 10, 10],     # 0: best
        [0, 0, 10, 15],     # 1: IoU with 0 = 100/150 = 0.67 -> suppressed
        [5, 0, 15, 10],     # 2: IoU with 0 = 50/150 = 0.33 -> kept at 0.4
        [100, 100, 110, 110],  # 3: far away
    ], dtype=np.float64)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert nms(boxes, scores, 0.4).tolist() == [0, 2, 3]
    assert nms(boxes, scores, 0.3).tolist() == [0, 3]          # 0.33 > 0.3 now suppresses 2
    assert nms(boxes, scores, 0.7).tolist() == [0, 1, 2, 3]    # nothing overlaps above 0.7
    # order follows scores, not input position
    assert nms(boxes, np.array([0.1, 0.2, 0.3, 0.95]), 0.4).tolist() == [3, 2, 1]


def test_nms_edge_cases():
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.4).tolist() == []
    # equal scores: the earlier box wins (stable)
    same = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], dtype=np.float64)
    assert nms(same, np.array([0.5, 0.5]), 0.4).tolist() == [0]
    # empty boxes have no overlap with anything (no 0/0)
    empty = np.array([[5, 5, 5, 5], [5, 5, 5, 5]], dtype=np.float64)
    assert nms(empty, np.array([0.9, 0.8]), 0.4).tolist() == [0, 1]


def test_box_area():
    assert box_area(np.array([1.0, 2.0, 4.0, 6.0])) == 12.0
    assert box_area(np.array([4.0, 2.0, 1.0, 6.0])) == 0.0


@pytest.mark.parametrize(("hw", "scaled", "factors"), [
    ((886, 1280), (443, 640), (0.5, 0.5)),        # t1.jpg: landscape, exact halving
    ((1000, 500), (640, 320), (0.64, 0.64)),       # portrait
    ((100, 100), (640, 640), (6.4, 6.4)),          # upscaled
    ((300, 1000), (192, 640), (0.64, 0.64)),
])
def test_letterbox(hw, scaled, factors):
    image = np.full((*hw, 3), 200, np.uint8)
    canvas, sx, sy = letterbox(image, (640, 640))
    assert canvas.shape == (640, 640, 3) and canvas.dtype == np.uint8
    assert (sx, sy) == pytest.approx(factors)
    h, w = scaled
    assert (canvas[:h, :w] == 200).all()
    assert (canvas[h:] == 0).all() and (canvas[:, w:] == 0).all()


# -- the detector through onnxruntime ---------------------------------------------------------

@pytest.fixture(scope="module")
def detector_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_detector(tmp_path_factory.mktemp("det") / "scrfd.onnx", seed=3)


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_faces_decode_whatever_the_output_names_and_order(tmp_path, batched, seed):
    det = Detector.load(str(synthetic_detector(tmp_path / "d.onnx", batched=batched, seed=seed)))
    assert det.levels == 3 and det.strides == (8, 16, 32) and det.fixed_size == (640, 640)
    # A 1280 x 1280 photo is halved into the canvas: planted canvas pixels x2.
    faces = det.detect(np.full((1280, 1280, 3), 180, np.uint8))
    a, b = PLANTED[0], PLANTED[1]
    # C overlaps A and scores less (NMS removes it); D is below the threshold.
    assert [round(f.score, 6) for f in faces] == [pytest.approx(b.score), pytest.approx(a.score)]
    np.testing.assert_allclose(faces[0].bbox, b.box * 2, atol=1e-3)
    np.testing.assert_allclose(faces[1].bbox, a.box * 2, atol=1e-3)
    np.testing.assert_allclose(faces[0].landmarks, b.landmarks * 2, atol=1e-3)
    np.testing.assert_allclose(faces[1].landmarks, a.landmarks * 2, atol=1e-3)
    assert faces[0].bbox.dtype == np.float32 and faces[0].landmarks.shape == (5, 2)


def test_scale_back_for_a_non_square_image(detector_file):
    det = Detector.load(str(detector_file))
    # 960 x 1280 (w x h): scale 0.5 on both axes, canvas 480 x 640 of image.
    faces = det.detect(np.full((1280, 960, 3), 180, np.uint8))
    np.testing.assert_allclose(faces[1].bbox, PLANTED[0].box * 2, atol=1e-3)


def test_thresholds(detector_file):
    det = Detector.load(str(detector_file))
    image = np.full((640, 640, 3), 180, np.uint8)
    assert len(det.detect(image, threshold=0.25)) == 3                 # D (0.30) now passes
    assert len(det.detect(image, threshold=0.92)) == 1                 # only B (0.95)
    assert len(det.detect(image, nms_iou=0.99)) == 3                   # C survives a lax NMS


def test_black_image_has_no_face(detector_file):
    assert Detector.load(str(detector_file)).detect(np.zeros((300, 200, 3), np.uint8)) == []


def test_detection_size_must_fit_the_model(detector_file):
    det = Detector.load(str(detector_file))
    with pytest.raises(ParameterError, match="fixed 640x640"):
        det.check_size((320, 320))


def test_detector_without_keypoints_is_refused(tmp_path):
    with pytest.raises(ModelPackError, match="without keypoint"):
        Detector.load(str(synthetic_detector(tmp_path / "d.onnx", keypoints=False)))


def test_outputs_that_do_not_tile_the_input_are_refused(tmp_path):
    # Row counts laid out for a 320 input, on a model that takes 640: the
    # feature-map sizes expose it.
    det = Detector.load(str(synthetic_detector(tmp_path / "d.onnx", grid_for=320)))
    with pytest.raises(ModelPackError, match="anchor grid"):
        det.detect(np.full((640, 640, 3), 180, np.uint8))


def test_a_recognizer_is_not_a_detector(tmp_path):
    from tests.face.support import tiny_recognizer

    with pytest.raises(ModelPackError, match="not an SCRFD detector"):
        Detector.load(str(tiny_recognizer(tmp_path / "r.onnx")))
