"""pprm.face.image: every way an image can fail is one typed, one-line ImageError; good ones come out HxWx3 uint8."""

from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("cv2", reason='the face extra is not installed (pip install -e ".[dev,face]")')
pytest.importorskip("onnxruntime", reason='the face extra is not installed (pip install -e ".[dev,face]")')

import cv2

from pprm.errors import ImageError, PprmError
from pprm.face.image import check_image, decode_image, load_image, source_name


def _png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


def test_round_trip_of_a_bgr_png(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    (tmp_path / "a.png").write_bytes(_png(img))
    got = load_image(tmp_path / "a.png")
    np.testing.assert_array_equal(got, img)
    assert got.dtype == np.uint8 and got.flags.c_contiguous


@pytest.mark.parametrize(("arr", "shape"), [
    (np.full((9, 7), 77, np.uint8), (9, 7, 3)),                     # grey -> three equal channels
    (np.full((9, 7, 4), 77, np.uint8), (9, 7, 3)),                  # alpha dropped
    (np.full((9, 7, 3), 40000, np.uint16), (9, 7, 3)),              # 16-bit scaled to 8
])
def test_other_layouts_become_bgr_uint8(arr, shape):
    got = decode_image(_png(arr))
    assert got.shape == shape and got.dtype == np.uint8
    if arr.dtype == np.uint16:
        assert (got == 40000 >> 8).all()


def test_exif_orientation_is_applied():
    pil = pytest.importorskip("PIL.Image", reason="Pillow is needed to write an EXIF-rotated JPEG")
    img = pil.new("RGB", (40, 20), (255, 0, 0))
    exif = pil.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    assert decode_image(buf.getvalue()).shape == (40, 20, 3)  # stored 40 wide, displayed 20 wide


@pytest.mark.parametrize(("data", "says"), [
    (b"", "is empty"),
    (b"definitely not an image", "not an image OpenCV can decode"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 10, "not an image OpenCV can decode"),  # a PNG signature, nothing behind
])
def test_undecodable_bytes(data, says, capfd):
    with pytest.raises(ImageError, match=says):
        decode_image(data, "image x.png")
    # OpenCV's own complaints are silenced: the one error is the message
    assert capfd.readouterr().err == ""


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match=r"cannot read image .*nope\.jpg: No such file or directory"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="cannot read image"):
        load_image(tmp_path)


def test_garbage_file_names_itself(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ImageError, match=r"bad\.jpg is not an image OpenCV can decode") as info:
        load_image(str(tmp_path / "bad.jpg"))
    assert isinstance(info.value, PprmError) and isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", [
    np.zeros((4, 4, 3), np.float32),
    np.zeros((4, 4), np.uint8),
    np.zeros((4, 4, 4), np.uint8),
    np.zeros((0, 4, 3), np.uint8),
    [[0, 0, 0]],
])
def test_arrays_must_be_hxwx3_uint8(bad):
    with pytest.raises(ImageError):
        check_image(bad)
    with pytest.raises(ImageError):
        load_image(bad) if isinstance(bad, np.ndarray) else check_image(bad)


def test_source_names():
    assert source_name("a/b.jpg", 3) == "a/b.jpg"
    assert source_name(np.zeros((1, 1, 3), np.uint8), 3) == "<array 3>"
