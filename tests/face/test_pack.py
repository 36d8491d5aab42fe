"""pprm.face.pack: finding the detector and recognizer in a folder, and every way that fails.

Also the onnxruntime execution providers (checked against the installed
build) and the default folder, ``~/.insightface/models/buffalo_l``, under a
temporary ``$HOME``.

Every failure is one ModelPackError line that names the files expected and
says how to obtain them; pprm never downloads anything.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("onnx", reason='the face extra is not installed (pip install -e ".[dev,face]")')
pytest.importorskip("onnxruntime", reason='the face extra is not installed (pip install -e ".[dev,face]")')

from pprm.errors import ModelPackError, ParameterError, PprmError
from pprm.face import load_models
from tests.face.support import synthetic_detector, tiny_recognizer

HOW = "pprm never downloads weights"
ALL_KNOWN = ("det_10g.onnx", "w600k_r50.onnx", "det_500m.onnx", "w600k_mbf.onnx")


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("parts")
    return {
        "det": synthetic_detector(d / "det.onnx"),
        "det_nokps": synthetic_detector(d / "det_nokps.onnx", keypoints=False),
        "rec": tiny_recognizer(d / "rec.onnx"),
        "rec2": tiny_recognizer(d / "rec2.onnx", seed=1),
        "rec96": tiny_recognizer(d / "rec96.onnx", size=96),   # e.g. an attribute model: not a recognizer
    }


def pack(folder: Path, files: dict[str, Path]) -> Path:
    folder.mkdir()
    for name, src in files.items():
        shutil.copy(src, folder / name)
    return folder


def refused(folder: Path | str | None, says: str) -> str:
    with pytest.raises(ModelPackError) as info:
        load_models(folder)
    msg = str(info.value)
    assert "\n" not in msg and says in msg, msg
    assert isinstance(info.value, PprmError)
    return msg


@pytest.mark.parametrize(("det", "rec", "name"), [
    ("det_10g.onnx", "w600k_r50.onnx", "buffalo_l"),
    ("det_500m.onnx", "w600k_mbf.onnx", "buffalo_s"),
])
def test_known_packs_by_name(tmp_path, parts, det, rec, name):
    # buffalo_l's other models are ignored, whatever they are.
    folder = pack(tmp_path / name, {det: parts["det"], rec: parts["rec"], "genderage.onnx": parts["rec96"],
                                    "2d106det.onnx": parts["rec96"]})
    models = load_models(folder)
    assert (models.pack, models.detector_file, models.recognizer_file, models.dim) == (name, det, rec, 512)
    assert models.describe()["input_mean"] == 127.5


def test_custom_folder_by_inspection(tmp_path, parts):
    folder = pack(tmp_path / "mine", {"face_finder.onnx": parts["det"], "embedder_v3.onnx": parts["rec"],
                                      "attributes.onnx": parts["rec96"]})
    models = load_models(folder, threads=1)
    assert (models.pack, models.detector_file, models.recognizer_file) == ("custom", "face_finder.onnx",
                                                                           "embedder_v3.onnx")


def test_symlinked_files_are_fine(tmp_path, parts):
    folder = tmp_path / "linked"
    folder.mkdir()
    os.symlink(parts["det"], folder / "det_500m.onnx")
    os.symlink(parts["rec"], folder / "w600k_mbf.onnx")
    assert load_models(folder).pack == "buffalo_s"


def test_missing_folder_names_expected_files_and_how_to_get_them(tmp_path):
    msg = refused(tmp_path / "buffalo_l", "does not exist")
    for f in ALL_KNOWN:
        assert f in msg
    assert HOW in msg and "buffalo_l.zip" in msg


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    msg = refused(tmp_path / "empty", "holds no .onnx files")
    assert all(f in msg for f in ALL_KNOWN) and HOW in msg


@pytest.mark.parametrize(("present", "pack_name", "missing"), [
    ("w600k_r50.onnx", "buffalo_l", "det_10g.onnx"),
    ("det_500m.onnx", "buffalo_s", "w600k_mbf.onnx"),
])
def test_incomplete_known_pack(tmp_path, parts, present, pack_name, missing):
    src = parts["rec"] if present.startswith("w600k") else parts["det"]
    folder = pack(tmp_path / "p", {present: src})
    msg = refused(folder, f"incomplete: {pack_name} needs")
    assert f"{missing} is missing" in msg and HOW in msg


def test_corrupt_model_file(tmp_path, parts):
    folder = pack(tmp_path / "p", {"w600k_mbf.onnx": parts["rec"]})
    (folder / "det_500m.onnx").write_bytes(b"PK\x03\x04 this is a zip, not a model")
    refused(folder, "det_500m.onnx is not a loadable ONNX model")


def test_truncated_model_file(tmp_path, parts):
    folder = pack(tmp_path / "p", {"det_500m.onnx": parts["det"]})
    (folder / "w600k_mbf.onnx").write_bytes(parts["rec"].read_bytes()[:5000])
    refused(folder, "w600k_mbf.onnx is not a loadable ONNX model")


def test_wrong_shaped_recognizer_under_a_known_name(tmp_path, parts):
    folder = pack(tmp_path / "p", {"det_500m.onnx": parts["det"], "w600k_mbf.onnx": parts["rec96"]})
    refused(folder, "w600k_mbf.onnx is not an ArcFace recognizer")


def test_detector_and_recognizer_swapped(tmp_path, parts):
    folder = pack(tmp_path / "p", {"det_500m.onnx": parts["rec"], "w600k_mbf.onnx": parts["det"]})
    refused(folder, "det_500m.onnx is not an SCRFD detector")


def test_two_recognizers_are_ambiguous(tmp_path, parts):
    folder = pack(tmp_path / "p", {"d.onnx": parts["det"], "a.onnx": parts["rec"], "b.onnx": parts["rec2"]})
    msg = refused(folder, "2 ArcFace recognizers (a.onnx, b.onnx)")
    assert "exactly one of each" in msg


def test_two_complete_packs_are_ambiguous(tmp_path, parts):
    folder = pack(tmp_path / "p", {"det_10g.onnx": parts["det"], "w600k_r50.onnx": parts["rec"],
                                   "det_500m.onnx": parts["det"], "w600k_mbf.onnx": parts["rec2"]})
    refused(folder, "several packs (buffalo_l, buffalo_s)")


def test_detector_without_keypoints_is_named(tmp_path, parts):
    folder = pack(tmp_path / "p", {"d.onnx": parts["det_nokps"], "r.onnx": parts["rec"]})
    msg = refused(folder, "0 SCRFD detectors with keypoints")
    assert "d.onnx is an SCRFD detector without keypoints" in msg


def test_no_recognizer_among_unrelated_models(tmp_path, parts):
    folder = pack(tmp_path / "p", {"d.onnx": parts["det"], "x.onnx": parts["rec96"]})
    refused(folder, "0 ArcFace recognizers")


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_threads_must_be_positive(tmp_path, parts, threads):
    folder = pack(tmp_path / "p", {"det_500m.onnx": parts["det"], "w600k_mbf.onnx": parts["rec"]})
    with pytest.raises(ParameterError, match="threads"):
        load_models(folder, threads=threads)


# -- execution providers -----------------------------------------------------------------------------

def test_cpu_provider_by_default_and_by_name(tmp_path, parts):
    folder = pack(tmp_path / "p", {"det_500m.onnx": parts["det"], "w600k_mbf.onnx": parts["rec"]})
    assert load_models(folder).describe()["providers"] == ["CPUExecutionProvider"]
    # A name given twice counts once.
    models = load_models(folder, providers=["CPUExecutionProvider", " CPUExecutionProvider"])
    assert models.providers == ["CPUExecutionProvider"]
    assert models.detector.session.get_providers() == ["CPUExecutionProvider"]


@pytest.mark.parametrize("providers", [["NoSuchExecutionProvider"], ["CPUExecutionProvider", "BogusProvider"]])
def test_unknown_provider_lists_the_available_ones(tmp_path, parts, providers):
    import onnxruntime

    folder = pack(tmp_path / "p", {"det_500m.onnx": parts["det"], "w600k_mbf.onnx": parts["rec"]})
    with pytest.raises(ParameterError) as info:
        load_models(folder, providers=providers)
    msg = str(info.value)
    assert "\n" not in msg and f"{providers[-1]!r} is not available" in msg
    assert msg.endswith("available: " + ", ".join(onnxruntime.get_available_providers()))


def test_unknown_provider_is_refused_before_the_folder_is_read(tmp_path):
    # Even where the folder is missing: the setting is wrong whatever the folder holds.
    with pytest.raises(ParameterError, match="not available"):
        load_models(tmp_path / "absent", providers=["Bogus"])


@pytest.mark.parametrize("providers", [[], [""], "CPUExecutionProvider", [1]])
def test_malformed_providers(providers):
    from pprm.face.session import check_providers

    with pytest.raises(ParameterError, match="providers"):
        check_providers(providers)


def test_open_session_takes_the_providers(parts):
    from pprm.face.session import open_session

    assert open_session(str(parts["rec"]), 1, ["CPUExecutionProvider"]).get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ParameterError, match="not available"):
        open_session(str(parts["rec"]), 1, ["Bogus"])


# -- the default pack folder ---------------------------------------------------------------------------

def test_default_folder_is_insightface_buffalo_l_under_home(tmp_path, parts, monkeypatch):
    from pprm.face.pack import DEFAULT_PACK, default_pack_folder

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    assert DEFAULT_PACK.split(os.sep) == ["~", ".insightface", "models", "buffalo_l"]
    assert default_pack_folder() is None
    msg = refused(None, "no model pack folder given, and the default ~/.insightface/models/buffalo_l does not exist")
    assert HOW in msg
    # A copy of a pack where insightface's tools unpack buffalo_l.
    target = tmp_path / "home" / ".insightface" / "models" / "buffalo_l"
    target.parent.mkdir(parents=True)
    pack(target, {"det_10g.onnx": parts["det"], "w600k_r50.onnx": parts["rec"]})
    assert default_pack_folder() == str(target)
    models = load_models()
    assert (models.folder, models.pack) == (str(target), "buffalo_l")
    assert models.describe()["folder"] == str(target)


def test_a_file_at_the_default_place_is_not_a_folder(tmp_path, monkeypatch):
    from pprm.face.pack import default_pack_folder

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".insightface" / "models").mkdir(parents=True)
    (tmp_path / ".insightface" / "models" / "buffalo_l").write_text("not a folder")
    assert default_pack_folder() is None
