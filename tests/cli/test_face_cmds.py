"""``pprm embed``, ``pprm enroll --images`` and ``pprm query --image`` on a synthetic model pack.

The pack (``_face``: a planted-output SCRFD-shaped detector and a tiny
ArcFace-shaped recognizer) needs no downloaded weights, so these run
everywhere the face extra is installed. A refused command exits 1 with one
``pprm: error:`` line and changes nothing; skipped images are one
``pprm: skipped:`` line each on stderr. ``import pprm`` and ``pprm --help``
must not load onnxruntime, and without the extra the face verbs say how to
install it.

Every test runs with ``$HOME`` set to an empty temporary folder, so that a
``~/.insightface/models/buffalo_l`` on the machine (the default pack folder
when ``--models`` is left out) cannot change what they see.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason='the face extra is not installed (pip install -e ".[dev,face]")')
pytest.importorskip("onnxruntime", reason='the face extra is not installed (pip install -e ".[dev,face]")')

import cv2

from pprm.face import FacePipeline, load_models
from pprm.node.state import State
from tests.face.support import link_pack, synthetic_detector, tiny_recognizer
from tests.helpers import cli, new_state, ok, ok_json, snapshot

FACE_MODULES = ("onnxruntime", "onnx", "cv2", "pprm.face")


@pytest.fixture(autouse=True)
def _empty_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("models")
    return link_pack(d / "buffalo_s", synthetic_detector(d / "d.onnx"), tiny_recognizer(d / "r.onnx"))


def photo(seed: int) -> np.ndarray:
    """A smooth random texture; zero-mean after the recognizer's normalisation, so that two photos'
    tiny-recognizer templates are nearly orthogonal (measured: |cos| < 0.2 over 20 seeds; threshold 0.4)."""
    small = np.random.default_rng(seed).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    return cv2.resize(small, (960, 720), interpolation=cv2.INTER_CUBIC)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """alice.png, bob.png, carol.jpg with faces; blank.png without; broken.jpg undecodable; notes.txt ignored."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, name in enumerate(("alice.png", "bob.png", "carol.png")):
        cv2.imwrite(str(folder / name), photo(i))
    cv2.imwrite(str(folder / "blank.png"), np.zeros((200, 200, 3), np.uint8))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture
def states(tmp_path: Path) -> dict[str, State]:
    de, fr = new_state(tmp_path / "DE", "DE"), new_state(tmp_path / "FR", "FR")
    de.trust(fr.card_bytes)
    fr.trust(de.card_bytes)
    return {"DE": de, "FR": fr}


def refused(roots: list[Path | str], *argv: object, says: str) -> str:
    before = [snapshot(str(r)) for r in roots]
    r = cli(*argv)
    assert r.code == 1, r
    assert r.out == "" and r.err.count("\n") == 1 and r.err.startswith("pprm: error: "), r.err
    assert says.lower() in r.err.lower(), r.err
    assert [snapshot(str(r)) for r in roots] == before
    return r.err


def skipped_lines(err: str) -> list[str]:
    lines = err.splitlines()
    assert all(line.startswith("pprm: skipped: ") for line in lines), err
    return lines


# -- pprm embed -------------------------------------------------------------------------------------

def test_embed_writes_templates_and_references(pack, photos, tmp_path):
    images = [photos / "alice.png", photos / "blank.png", photos / "bob.png", photos / "broken.jpg"]
    r = ok("embed", "--models", pack, *images, "--out", tmp_path / "t.npy", "--refs-out", tmp_path / "r.txt")
    lines = skipped_lines(r.err)
    assert len(lines) == 2 and "no face found" in lines[0] and "blank.png" in lines[0]
    assert "broken.jpg is not an image OpenCV can decode" in lines[1]
    assert r.out.startswith("embedded 2 face(s) from 4 image(s)") and "2 skipped" in r.out
    t = np.load(tmp_path / "t.npy", allow_pickle=False)
    assert t.shape == (2, 512) and t.dtype == np.float32
    want = FacePipeline(load_models(pack)).embed([photos / "alice.png", photos / "bob.png"]).templates()
    np.testing.assert_allclose(t, want, atol=1e-6)
    assert (tmp_path / "r.txt").read_text() == "alice.png\nbob.png\n"


def test_embed_all_faces_and_json(pack, photos, tmp_path):
    report = ok_json("embed", "--models", pack, photos / "alice.png", photos / "blank.png", "--all-faces",
                     "--out", tmp_path / "t.npy", "--refs-out", tmp_path / "r.txt")
    assert (tmp_path / "r.txt").read_text() == "alice.png\nalice.png#1\n"
    assert report["templates"] == 2 and report["dim"] == 512 and report["images"] == 2
    assert report["skipped"] == [{"image": str(photos / "blank.png"),
                                  "reason": f"no face found in {photos / 'blank.png'}"}]
    assert report["models"]["pack"] == "buffalo_s" and report["models"]["recognizer"] == "w600k_mbf.onnx"
    assert np.load(tmp_path / "t.npy").shape == (2, 512)


def test_embed_without_any_face_writes_nothing(pack, photos, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    r = cli("embed", "--models", pack, photos / "blank.png", photos / "broken.jpg", "--out", out / "t.npy",
            "--refs-out", out / "r.txt")
    assert r.code == 1 and r.out == ""
    *skips, error = r.err.splitlines()
    assert len(skipped_lines("\n".join(skips))) == 2
    assert error == "pprm: error: no face found in any of the 2 image(s); nothing written"
    assert list(out.iterdir()) == []


def test_embed_refuses_duplicate_file_names_before_any_work(pack, photos, tmp_path):
    (tmp_path / "other").mkdir()
    cv2.imwrite(str(tmp_path / "other" / "alice.png"), photo(9))
    refused([tmp_path], "embed", "--models", pack, photos / "alice.png", tmp_path / "other" / "alice.png",
            "--out", tmp_path / "t.npy", "--refs-out", tmp_path / "r.txt", says="'alice.png' appears twice")


def test_missing_pack_is_one_clear_line(photos, tmp_path):
    err = refused([tmp_path], "embed", "--models", tmp_path / "buffalo_l", photos / "alice.png",
                  "--out", tmp_path / "t.npy", says="does not exist")
    assert "det_10g.onnx" in err and "w600k_r50.onnx" in err and "pprm never downloads weights" in err


# -- pprm enroll --images -------------------------------------------------------------------------------

def test_enroll_folder_with_file_stems(pack, photos, states):
    fr = states["FR"]
    r = ok("enroll", fr.dir, "--images", photos, "--models", pack, "--json")
    # The enrolment report may carry more fields (owned by state_cmds); these are the face pipeline's.
    report = json.loads(r.out)
    assert {k: report[k] for k in ("enrolled", "total", "skipped")} == {"enrolled": 3, "total": 3, "skipped": [
        {"image": str(photos / "blank.png"), "reason": f"no face found in {photos / 'blank.png'}"},
        {"image": str(photos / "broken.jpg"), "reason": f"image {photos / 'broken.jpg'} is not an image OpenCV "
                                                        "can decode"}]}
    assert len(skipped_lines(r.err)) == 2
    assert sorted(State.open(fr.dir).gallery().index.references.values()) == ["alice", "bob", "carol"]


def test_enroll_folder_with_a_csv_mapping(pack, photos, states, tmp_path):
    (tmp_path / "map.csv").write_text("\ufeffFile, Reference\nalice.png,FR-0001\nbob.png,FR-0002\n"
                                      "carol.png,FR-0003\nblank.png,FR-0004\nbroken.jpg,FR-0005\n")
    r = ok("enroll", states["FR"].dir, "--images", photos, "--models", pack, "--refs-csv", tmp_path / "map.csv")
    assert r.out.strip() == "enrolled 3 template(s) into FR; the gallery holds 3 (2 image(s) skipped)"
    refs = State.open(states["FR"].dir).gallery().index.references.values()
    assert sorted(refs) == ["FR-0001", "FR-0002", "FR-0003"]


ROWS = "alice.png,A\nbob.png,B\ncarol.png,C\nblank.png,D\nbroken.jpg,E\n"


@pytest.mark.parametrize(("csv_text", "says"), [
    ("alice.png,A\n", "needs a header row"),
    ("file,reference\nalice.png,A\n", "has no row for 'blank.png' (and 3 more)"),
    ("file,reference\n" + ROWS + "dave.png,F\n", "line 7: 'dave.png' is not an image file"),
    ("file,reference\n" + ROWS + "alice.png,G\n", "'alice.png' is listed twice"),
    ("file,reference\n" + ROWS.replace(",B", ",A"), "reference 'A' appears twice"),
    ("file,reference\n" + ROWS.replace(",C", ", C"), "line 4: reference ' C' is empty, too long or not printable"),
])
def test_enroll_refuses_a_bad_mapping_and_changes_nothing(pack, photos, states, tmp_path, csv_text, says):
    (tmp_path / "map.csv").write_text(csv_text)
    refused([tmp_path], "enroll", states["FR"].dir, "--images", photos, "--models", pack,
            "--refs-csv", tmp_path / "map.csv", says=says)


def test_enroll_refuses_non_utf8_csv(pack, photos, states, tmp_path):
    (tmp_path / "map.csv").write_bytes(b"file,reference\nalice.png,\xff\n")
    refused([tmp_path], "enroll", states["FR"].dir, "--images", photos, "--models", pack,
            "--refs-csv", tmp_path / "map.csv", says="not valid UTF-8")


def test_enroll_refuses_a_file_name_that_cannot_be_a_reference(pack, photos, states, tmp_path):
    cv2.imwrite(str(photos / ("x" * 130 + ".png")), photo(8))
    refused([tmp_path], "enroll", states["FR"].dir, "--images", photos, "--models", pack,
            says="cannot be a reference (empty, too long or not printable); map it with --refs-csv")


def test_enroll_refuses_duplicate_stems(pack, photos, states, tmp_path):
    cv2.imwrite(str(photos / "alice.jpg"), photo(7))
    refused([tmp_path], "enroll", states["FR"].dir, "--images", photos, "--models", pack,
            says="'alice' appears twice")


def test_enroll_refuses_an_already_enrolled_reference_before_embedding(pack, photos, states, tmp_path):
    ok("enroll", states["FR"].dir, "--images", photos, "--models", pack)
    err = refused([tmp_path], "enroll", states["FR"].dir, "--images", photos, "--models", pack,
                  says="is already enrolled")
    assert "'alice'" in err


def test_enroll_with_no_face_anywhere_enrols_nothing(pack, tmp_path, states):
    folder = tmp_path / "blank"
    folder.mkdir()
    cv2.imwrite(str(folder / "x.png"), np.zeros((100, 100, 3), np.uint8))
    before = snapshot(str(tmp_path))
    r = cli("enroll", states["FR"].dir, "--images", folder, "--models", pack)
    assert r.code == 1
    last = r.err.splitlines()[-1]
    assert last == f"pprm: error: no face found in any of the 1 image(s) in {folder}; nothing enrolled"
    assert snapshot(str(tmp_path)) == before


def test_enroll_refuses_an_empty_or_missing_folder(pack, tmp_path, states):
    (tmp_path / "empty").mkdir()
    refused([tmp_path], "enroll", states["FR"].dir, "--images", tmp_path / "empty", "--models", pack,
            says="no image files")
    refused([tmp_path], "enroll", states["FR"].dir, "--images", tmp_path / "nope", "--models", pack,
            says="no such file or directory")


def test_enroll_refuses_a_recognizer_of_another_dimension(pack, photos, tmp_path):
    st = new_state(tmp_path / "NL", "NL", dim=128)
    refused([tmp_path], "enroll", st.dir, "--images", photos, "--models", pack,
            says="makes templates of dimension 512, state NL holds dimension 128")


@pytest.mark.parametrize("argv", [
    ["--templates", "t.npy", "--refs", "r.txt", "--images", "photos", "--models", "m"],
    ["--templates", "t.npy", "--images", "photos"],
    [],
    ["--images", "photos"],
    ["--models", "m"],
    ["--templates", "t.npy"],
    ["--templates", "t.npy", "--refs", "r.txt", "--refs-csv", "map.csv"],
])
def test_enroll_source_combinations_are_usage_errors(argv):
    r = cli("enroll", "dir", *argv)
    assert r.code == 2 and r.out == "" and "usage: pprm enroll" in r.err


# -- pprm query --image ------------------------------------------------------------------------------

def test_query_with_an_image_finds_the_enrolled_photo(pack, photos, states, tmp_path):
    ok("enroll", states["FR"].dir, "--images", photos, "--models", pack)
    for probe, hit in (("bob.png", True), ("stranger.png", False)):
        if probe == "stranger.png":
            cv2.imwrite(str(tmp_path / probe), photo(99))
        src = photos / probe if hit else tmp_path / probe
        ok("query", states["DE"].dir, "--image", src, "--models", pack, "--to", "FR", "--case", f"C-{probe}",
           "--purpose", "serious-crime", "--out", tmp_path / "q.msg")
        ok("answer", states["FR"].dir, tmp_path / "q.msg", "--out", tmp_path / "a.msg")
        opened = ok_json("open", states["DE"].dir, tmp_path / "a.msg")
        assert opened["hit"] is hit
        if hit:
            ok("follow-up", states["DE"].dir, tmp_path / "a.msg", opened["candidates"][0], "--out", tmp_path / "f.msg")
            assert ok_json("resolve", states["FR"].dir, tmp_path / "f.msg")["reference"] == "bob"


def test_query_without_a_face_writes_nothing(pack, photos, states, tmp_path):
    refused([tmp_path], "query", states["DE"].dir, "--image", photos / "blank.png", "--models", pack, "--to", "FR",
            "--case", "C", "--purpose", "serious-crime", "--out", tmp_path / "q.msg", says="no face found")
    refused([tmp_path], "query", states["DE"].dir, "--image", photos / "absent.png", "--models", pack, "--to", "FR",
            "--case", "C", "--purpose", "serious-crime", "--out", tmp_path / "q.msg", says="cannot read image")


@pytest.mark.parametrize("argv", [
    ["--probe", "p.npy", "--image", "a.png", "--models", "m"],
    ["--probe", "p.npy", "--models", "m"],
    [],
    ["--image", "a.png"],
])
def test_query_source_combinations_are_usage_errors(argv):
    r = cli("query", "dir", *argv, "--to", "FR", "--case", "C", "--purpose", "serious-crime", "--out", "q.msg")
    assert r.code == 2 and r.out == "" and "usage: pprm query" in r.err


# -- the optional extra ------------------------------------------------------------------------------------

def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_pprm_and_help_do_not_load_the_face_stack():
    proc = _python(
        "import contextlib, io, sys\n"
        "import pprm, pprm.errors\n"
        "from pprm.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    codes = [main(['--help']), main(['embed', '--help']), main(['enroll', '--help']),"
        " main(['query', '--help'])]\n"
        f"loaded = [m for m in {FACE_MODULES!r} if m in sys.modules]\n"
        "print(codes, loaded)\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[0, 0, 0, 0] []"


def test_without_the_extra_the_face_verbs_say_how_to_install_it(tmp_path):
    # None in sys.modules makes every import of onnxruntime fail, as if it were not installed.
    proc = _python(
        "import sys\n"
        "sys.modules['onnxruntime'] = None\n"
        "from pprm.cli.main import main\n"
        f"sys.exit(main(['embed', '--models', {str(tmp_path)!r}, 'a.jpg', '--out', {str(tmp_path / 't.npy')!r}]))\n")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == ('pprm: error: the face pipeline needs the optional face extra (onnxruntime is missing): '
                           'pip install "pprm[face]"\n')
    proc = _python(
        "import sys\n"
        "sys.modules['cv2'] = None\n"
        "from pprm.errors import MissingExtraError, PprmError\n"
        "try:\n"
        "    import pprm.face\n"
        "except MissingExtraError as exc:\n"
        "    print(isinstance(exc, ImportError), isinstance(exc, PprmError), exc)\n")
    assert proc.stdout.strip() == ('True True the face pipeline needs the optional face extra (cv2 is missing): '
                                   'pip install "pprm[face]"')


# -- pprm embed --aligned ----------------------------------------------------------------------------

def dark_photo(seed: int) -> np.ndarray:
    """A dark texture (every pixel <= 40) with one bright patch in a corner, far from the planted faces.

    The synthetic detector sees a face in it (its gate opens on the patch), but
    not in the aligned crop of its largest face, which is all dark: like a real
    112x112 crop, in which SCRFD finds no face.
    """
    small = np.random.default_rng(seed).integers(0, 41, (60, 80, 3), dtype=np.uint8)
    image = cv2.resize(small, (960, 720), interpolation=cv2.INTER_LINEAR)
    image[640:, 880:] = 255
    return image


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64)))


def test_an_aligned_crop_without_a_face_embeds_with_aligned(pack, tmp_path):
    from pprm.face import align_face

    cv2.imwrite(str(tmp_path / "photo.png"), dark_photo(1))
    ok("embed", "--models", pack, tmp_path / "photo.png", "--out", tmp_path / "full.npy")
    # The crop the full pipeline embedded, written losslessly.
    image = cv2.imread(str(tmp_path / "photo.png"))
    assert image is not None
    crop = align_face(image, FacePipeline(load_models(pack)).detect(image)[0].landmarks)
    assert crop.shape == (112, 112, 3) and crop.max() <= 63
    cv2.imwrite(str(tmp_path / "crop.png"), crop)
    # Through detection and alignment: "no face found".
    r = cli("embed", "--models", pack, tmp_path / "crop.png", "--out", tmp_path / "t.npy")
    assert r.code == 1 and "no face found" in r.err and not (tmp_path / "t.npy").exists()
    # With --aligned: embedded directly, the full pipeline's template.
    report = ok_json("embed", "--models", pack, tmp_path / "crop.png", "--aligned", "--out", tmp_path / "t.npy",
                     "--refs-out", tmp_path / "r.txt")
    assert (report["templates"], report["images"], report["skipped"]) == (1, 1, [])
    full, aligned = np.load(tmp_path / "full.npy"), np.load(tmp_path / "t.npy")
    assert aligned.shape == (1, 512) and aligned.dtype == np.float32
    assert cosine(aligned[0], full[0]) >= 1 - 1e-5
    assert (tmp_path / "r.txt").read_text() == "crop.png\n"
    # A 224x224 crop (aligned at twice the scale) gives the same template.
    cv2.imwrite(str(tmp_path / "crop224.png"), cv2.resize(crop, (224, 224), interpolation=cv2.INTER_NEAREST))
    r = ok("embed", "--models", pack, tmp_path / "crop224.png", "--aligned", "--out", tmp_path / "t224.npy")
    assert r.out.startswith("embedded 1 aligned crop(s) from 1 image(s)")
    assert cosine(np.load(tmp_path / "t224.npy")[0], full[0]) >= 1 - 1e-5


def test_aligned_refuses_an_image_of_another_size_naming_it(pack, photos, tmp_path):
    cv2.imwrite(str(tmp_path / "crop.png"), cv2.resize(photo(5), (112, 112)))
    err = refused([tmp_path], "embed", "--models", pack, tmp_path / "crop.png", photos / "alice.png", "--aligned",
                  "--out", tmp_path / "t.npy", says=f"image {photos / 'alice.png'} is 960x720, not an aligned "
                                                      "112x112 crop")
    assert "without --aligned" in err


def test_enroll_and_query_aligned_crops(pack, states, tmp_path):
    folder = tmp_path / "crops"
    folder.mkdir()
    for i, name in enumerate(("ann.png", "ben.png", "cid.png")):
        cv2.imwrite(str(folder / name), cv2.resize(photo(20 + i), (112, 112), interpolation=cv2.INTER_AREA))
    report = ok_json("enroll", states["FR"].dir, "--images", folder, "--models", pack, "--aligned")
    assert {k: report[k] for k in ("enrolled", "total", "skipped")} == {"enrolled": 3, "total": 3, "skipped": []}
    ok("query", states["DE"].dir, "--image", folder / "ben.png", "--aligned", "--models", pack, "--to", "FR",
       "--case", "C-1", "--purpose", "serious-crime", "--out", tmp_path / "q.msg")
    ok("answer", states["FR"].dir, tmp_path / "q.msg", "--out", tmp_path / "a.msg")
    opened = ok_json("open", states["DE"].dir, tmp_path / "a.msg")
    assert opened["hit"] is True and len(opened["candidates"]) == 1
    ok("follow-up", states["DE"].dir, tmp_path / "a.msg", opened["candidates"][0], "--out", tmp_path / "f.msg")
    assert ok_json("resolve", states["FR"].dir, tmp_path / "f.msg")["reference"] == "ben"


@pytest.mark.parametrize(("verb", "argv"), [
    ("enroll", ["dir", "--templates", "t.npy", "--refs", "r.txt", "--aligned"]),
    ("query", ["dir", "--probe", "p.npy", "--aligned", "--to", "FR", "--case", "C", "--purpose", "serious-crime",
               "--out", "q.msg"]),
])
def test_aligned_without_images_is_a_usage_error(verb, argv):
    r = cli(verb, *argv)
    assert r.code == 2 and r.out == "" and "--aligned goes with --image" in r.err


# -- --providers ---------------------------------------------------------------------------------------

def test_providers_default_and_explicit(pack, photos, tmp_path):
    for extra in ([], ["--providers", "CPUExecutionProvider"]):
        report = ok_json("embed", "--models", pack, photos / "alice.png", "--out", tmp_path / "t.npy", *extra)
        assert report["models"]["providers"] == ["CPUExecutionProvider"]


@pytest.mark.parametrize("verb", ["embed", "enroll", "query"])
def test_an_unknown_provider_is_one_line_listing_the_available_ones(pack, photos, states, tmp_path, verb):
    import onnxruntime

    argv = {"embed": ["embed", photos / "alice.png", "--out", tmp_path / "t.npy"],
            "enroll": ["enroll", states["FR"].dir, "--images", photos],
            "query": ["query", states["DE"].dir, "--image", photos / "alice.png", "--to", "FR", "--case", "C",
                      "--purpose", "serious-crime", "--out", tmp_path / "q.msg"]}[verb]
    err = refused([tmp_path], *argv, "--models", pack, "--providers", "CUDAExecutionProvider,Bogus",
                  says="is not available in this onnxruntime installation")
    missing = next(p for p in ("CUDAExecutionProvider", "Bogus") if p not in onnxruntime.get_available_providers())
    assert f"{missing!r}" in err
    assert err.rstrip("\n").endswith("available: " + ", ".join(onnxruntime.get_available_providers()))


@pytest.mark.parametrize("value", ["", ",", "CPUExecutionProvider,"])
def test_an_empty_provider_name_is_a_usage_error(pack, photos, tmp_path, value):
    r = cli("embed", "--models", pack, photos / "alice.png", "--out", tmp_path / "t.npy", "--providers", value)
    assert r.code == 2 and r.out == "" and "--providers" in r.err and "usage: pprm embed" in r.err


# -- the default pack folder -----------------------------------------------------------------------------

def test_default_models_matches_the_library():
    from pprm.cli.face_cmds import DEFAULT_MODELS
    from pprm.face.pack import DEFAULT_PACK

    assert DEFAULT_MODELS == DEFAULT_PACK == "~/.insightface/models/buffalo_l"


@pytest.fixture
def home_pack(pack, tmp_path, monkeypatch) -> Path:
    """A copy of the test pack where insightface unpacks buffalo_l, under a temporary $HOME."""
    home = tmp_path / "home"
    target = home / ".insightface" / "models" / "buffalo_l"
    target.mkdir(parents=True)
    for f in pack.iterdir():
        shutil.copy(f, target / f.name)  # copies the files the links point to
    monkeypatch.setenv("HOME", str(home))
    return target


def test_without_models_the_insightface_folder_is_used(home_pack, photos, states, tmp_path):
    report = ok_json("embed", photos / "alice.png", "--out", tmp_path / "t.npy")
    assert report["models"]["folder"] == str(home_pack) and report["models"]["pack"] == "buffalo_s"
    want = FacePipeline(load_models(home_pack)).embed([photos / "alice.png"]).templates()
    np.testing.assert_allclose(np.load(tmp_path / "t.npy"), want, atol=1e-6)
    assert ok_json("enroll", states["FR"].dir, "--images", photos)["enrolled"] == 3
    ok("query", states["DE"].dir, "--image", photos / "bob.png", "--to", "FR", "--case", "C-1",
       "--purpose", "serious-crime", "--out", tmp_path / "q.msg")
    # --models still wins over the default.
    refused([tmp_path], "embed", "--models", tmp_path / "nope", photos / "alice.png", "--out", tmp_path / "u.npy",
            says="does not exist")


@pytest.mark.parametrize(("verb", "argv", "says"), [
    ("embed", ["a.png", "--out", "t.npy"], "the following arguments are required: --models"),
    ("enroll", ["dir", "--images", "photos"], "--images needs --models"),
    ("query", ["dir", "--image", "a.png", "--to", "FR", "--case", "C", "--purpose", "serious-crime", "--out",
               "q.msg"], "--image needs --models"),
])
def test_without_models_or_the_default_folder_models_is_required(verb, argv, says):
    r = cli(verb, *argv)
    assert r.code == 2 and r.out == "" and f"usage: pprm {verb}" in r.err
    assert f"{says} (there is no default pack folder ~/.insightface/models/buffalo_l)" in r.err
