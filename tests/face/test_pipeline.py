"""pprm.face.pipeline on a synthetic pack: detection, face choice, skipping, batching, through onnxruntime.

The synthetic detector reports the planted faces of ``_face.PLANTED`` on any
image that is not black; the tiny recognizer's output is known in numpy. So
every template can be predicted from the planted landmarks. With
``aligned=True`` the input is the crop itself, and its template must equal
the one the full pipeline made from the photo it was cut from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason='the face extra is not installed (pip install -e ".[dev,face]")')
pytest.importorskip("onnxruntime", reason='the face extra is not installed (pip install -e ".[dev,face]")')

import cv2

from pprm.errors import ImageError, NoFaceError, ParameterError
from pprm.face import ARCFACE_LANDMARKS_112, Detection, FacePipeline, FaceResults, align_face, load_models
from tests.face.support import PLANTED, link_pack, reference_templates, synthetic_detector, tiny_recognizer

A, B = PLANTED[0], PLANTED[1]  # the largest face, and the smaller one that scores higher


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> FacePipeline:
    d = tmp_path_factory.mktemp("pack")
    det, rec = synthetic_detector(d / "d.onnx"), tiny_recognizer(d / "r.onnx")
    return FacePipeline(load_models(link_pack(d / "pack", det, rec), threads=1))


def photo(seed: int, size: tuple[int, int] = (1280, 1280)) -> np.ndarray:
    """A bright random texture, smooth enough that the aligned crops are stable."""
    small = np.random.default_rng(seed).integers(64, 256, (size[0] // 16, size[1] // 16, 3), dtype=np.uint8)
    return cv2.resize(small, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)


def expected(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The template of the face at ``landmarks``, the recognizer computed in numpy.

    The landmarks are the ones the detector reported (float32; each test
    checks them against the planted float64 ones): a last-bit difference can
    flip a crop pixel by one grey level.
    """
    return reference_templates(align_face(image, landmarks)[None])[0]


def test_largest_face_by_default(pipeline):
    img = photo(1)
    results = pipeline.embed([img])
    assert len(results) == 1 and results.skipped == []
    r = results[0]
    # A is larger than B although B scores higher: area decides.
    assert (r.source, r.image_index, r.face_index) == ("<array 0>", 0, 0)
    np.testing.assert_allclose(r.bbox, A.box * 2, atol=1e-3)
    assert r.det_score == pytest.approx(A.score)
    np.testing.assert_allclose(r.landmarks, A.landmarks * 2, atol=1e-3)
    assert r.template.dtype == np.float32 and r.template.shape == (512,)
    np.testing.assert_allclose(r.template, expected(img, r.landmarks), atol=2e-6)


def test_all_faces_largest_first(pipeline):
    img = photo(2)
    results = pipeline.embed([img], all_faces=True)
    assert [(r.face_index, round(r.det_score, 2)) for r in results] == [(0, 0.9), (1, 0.95)]
    np.testing.assert_allclose(results[1].landmarks, B.landmarks * 2, atol=1e-3)
    np.testing.assert_allclose(results[1].template, expected(img, results[1].landmarks), atol=2e-6)
    t = results.templates()
    assert t.shape == (2, 512) and t.dtype == np.float32


def test_skipped_images_do_not_stop_the_batch(pipeline, tmp_path):
    (tmp_path / "garbage.jpg").write_bytes(b"not a jpeg")
    ok_file = tmp_path / "ok.png"
    cv2.imwrite(str(ok_file), photo(3))
    sources = [photo(4), np.zeros((300, 300, 3), np.uint8), str(tmp_path / "missing.jpg"),
               str(tmp_path / "garbage.jpg"), str(ok_file), np.zeros((3, 3), np.uint8)]
    results = pipeline.embed(sources)
    assert [(r.image_index, r.source) for r in results] == [(0, "<array 0>"), (4, str(ok_file))]
    reasons = [(s.image_index, s.reason) for s in results.skipped]
    assert [i for i, _ in reasons] == [1, 2, 3, 5]
    assert reasons[0][1] == "no face found in <array 1>"
    assert "cannot read image" in reasons[1][1] and "No such file" in reasons[1][1]
    assert "not an image OpenCV can decode" in reasons[2][1]
    assert "HxWx3 uint8" in reasons[3][1]
    assert all("\n" not in r for _, r in reasons)


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_batches_equal_one_at_a_time(pipeline, batch_size):
    images = [photo(10 + i) for i in range(7)]
    whole = pipeline.embed(images, all_faces=True, batch_size=batch_size)
    single = [pipeline.embed([img], all_faces=True, batch_size=1) for img in images]
    flat = [r for res in single for r in res]
    assert [(r.image_index, r.face_index) for r in whole] == [(i, k) for i in range(7) for k in (0, 1)]
    np.testing.assert_allclose(whole.templates(), np.stack([r.template for r in flat]), atol=1e-6)


def test_progress_reports_every_image(pipeline):
    seen: list[tuple[int, int]] = []
    pipeline.embed([photo(20), np.zeros((50, 50, 3), np.uint8), photo(21)], progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_embed_one(pipeline, tmp_path):
    img = photo(30)
    largest = pipeline.detect(img)[0]
    np.testing.assert_allclose(largest.landmarks, A.landmarks * 2, atol=1e-3)
    np.testing.assert_allclose(pipeline.embed_one(img), expected(img, largest.landmarks), atol=2e-6)
    with pytest.raises(NoFaceError, match="no face found") as info:
        pipeline.embed_one(np.zeros((100, 100, 3), np.uint8))
    assert isinstance(info.value, LookupError)
    with pytest.raises(ImageError, match="cannot read image"):
        pipeline.embed_one(tmp_path / "absent.jpg")


def test_degenerate_landmarks_skip_the_face_not_the_batch(pipeline, monkeypatch):
    flat = Detection(np.array([0, 0, 200, 200], np.float32), 0.99,
                     np.array([[10, 10], [20, 20], [30, 30], [40, 40], [50, 50]], np.float32))
    real = pipeline.models.detector.detect
    calls = iter([[flat], None])

    def detect(image, **kw):
        planted = next(calls)
        return planted if planted is not None else real(image, **kw)

    monkeypatch.setattr(pipeline.models.detector, "detect", detect)
    results = pipeline.embed([photo(40), photo(41)])
    assert [r.image_index for r in results] == [1]
    assert results.skipped[0].reason.startswith("face 0 in <array 0>: source landmarks are collinear")


def test_empty_results():
    res = FaceResults(dim=512)
    assert res.templates().shape == (0, 512) and res.skipped == []


@pytest.mark.parametrize(("kw", "says"), [
    ({"det_threshold": 0.0}, "det_threshold"),
    ({"det_threshold": 1.0}, "det_threshold"),
    ({"nms_threshold": 0.0}, "nms_threshold"),
    ({"det_size": (320, 320)}, "fixed 640x640"),
    ({"det_size": (640,)}, "det_size"),
])
def test_settings_are_checked(pipeline, kw, says):
    with pytest.raises(ParameterError, match=says):
        FacePipeline(pipeline.models, **kw)


def test_batch_size_is_checked(pipeline):
    with pytest.raises(ParameterError, match="batch_size"):
        pipeline.embed([photo(1)], batch_size=0)


def test_detection_size_must_tile_the_strides(tmp_path: Path):
    # A detector with a dynamic input size takes any multiple of 32.
    from pprm.face.detect import Detector

    det = Detector.load(str(synthetic_detector(tmp_path / "d.onnx")))
    det.fixed_size = None
    assert det.check_size((320, 480)) == (320, 480)
    with pytest.raises(ParameterError, match="multiples of 32"):
        det.check_size((320, 500))


# -- already aligned crops (aligned=True) ------------------------------------------------------------

def test_aligned_crop_gives_the_full_pipelines_template(pipeline):
    img = photo(50)
    full = pipeline.embed([img])[0]
    crop = align_face(img, full.landmarks)
    results = pipeline.embed([crop], aligned=True)
    assert len(results) == 1 and results.skipped == []
    r = results[0]
    np.testing.assert_allclose(r.template, full.template, atol=1e-6)
    np.testing.assert_allclose(r.template, reference_templates(crop[None])[0], atol=2e-6)
    # No detector ran: the whole crop, no score, the landmarks the alignment put the face on.
    assert (r.source, r.image_index, r.face_index, r.bbox) == ("<array 0>", 0, 0, (0.0, 0.0, 112.0, 112.0))
    assert np.isnan(r.det_score)
    np.testing.assert_allclose(r.landmarks, ARCFACE_LANDMARKS_112, atol=1e-5)
    np.testing.assert_allclose(pipeline.embed_one(crop, aligned=True), full.template, atol=1e-6)


def test_aligned_skips_detection(pipeline, monkeypatch):
    def no_detection(*args, **kw):
        raise AssertionError("the detector ran on an aligned crop")

    monkeypatch.setattr(pipeline.models.detector, "detect", no_detection)
    # A black crop shows the synthetic detector no face; aligned, it is embedded all the same.
    assert pipeline.embed([np.zeros((112, 112, 3), np.uint8)], aligned=True).templates().shape == (1, 512)


def test_aligned_multiples_of_112_are_downscaled(pipeline):
    crop = align_face(photo(51), pipeline.detect(photo(51))[0].landmarks)
    big = cv2.resize(crop, (224, 224), interpolation=cv2.INTER_NEAREST)
    r = pipeline.embed([big], aligned=True)[0]
    np.testing.assert_allclose(r.template, pipeline.embed([crop], aligned=True)[0].template, atol=1e-6)
    assert r.bbox == (0.0, 0.0, 224.0, 224.0)
    np.testing.assert_allclose(r.landmarks, ARCFACE_LANDMARKS_112 * 2, atol=1e-4)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_aligned_batches_and_skips(pipeline, tmp_path, batch_size):
    crops = [cv2.resize(photo(60 + i), (112, 112), interpolation=cv2.INTER_AREA) for i in range(5)]
    (tmp_path / "garbage.png").write_bytes(b"not a png")
    sources = [crops[0], str(tmp_path / "garbage.png"), *crops[1:]]
    results = pipeline.embed(sources, aligned=True, batch_size=batch_size)
    assert [r.image_index for r in results] == [0, 2, 3, 4, 5]
    assert len(results.skipped) == 1 and "not an image OpenCV can decode" in results.skipped[0].reason
    np.testing.assert_allclose(results.templates(), reference_templates(np.stack(crops)), atol=2e-6)


def test_aligned_refuses_a_photo_naming_it(pipeline, tmp_path):
    crop_file, photo_file = tmp_path / "crop.png", tmp_path / "photo.png"
    cv2.imwrite(str(crop_file), cv2.resize(photo(70), (112, 112)))
    cv2.imwrite(str(photo_file), photo(71, (480, 640)))
    # The whole batch stops: the claim that the inputs are aligned crops is wrong.
    with pytest.raises(ImageError) as info:
        pipeline.embed([crop_file, photo_file], aligned=True)
    assert str(info.value).startswith(f"image {photo_file} is 640x480, not an aligned 112x112 crop")
    with pytest.raises(ImageError, match=r"<array 0> is 128x128, not an aligned 112x112 crop"):
        pipeline.embed_one(np.zeros((128, 128, 3), np.uint8), aligned=True)
