"""Image input: files or arrays to HxWx3 uint8 BGR, with one typed error for every failure.

OpenCV's channel order (BGR) is used throughout :mod:`pprm.face`, as in
insightface; the swap to the RGB order the networks were trained on happens
when a network's input blob is built.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np

from pprm.errors import ImageError

__all__ = ["ImageSource", "load_image", "decode_image", "check_image", "source_name", "IMAGE_SUFFIXES"]

# Anything :func:`load_image` accepts: a path or an HxWx3 uint8 BGR array.
ImageSource = str | os.PathLike[str] | np.ndarray

# File types OpenCV's default build decodes, for picking images out of a folder.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def source_name(source: Any, index: int) -> str:
    """How an input is named in results and messages: its path, or ``<array i>``."""
    if isinstance(source, np.ndarray):
        return f"<array {index}>"
    return os.fspath(source)


def check_image(image: Any, name: str = "image") -> np.ndarray:
    """Accept an HxWx3 uint8 array (BGR) as it is.

    Args:
        image: the array.
        name: how to call it in the message.

    Returns:
        ``image``, C-contiguous.

    Raises:
        ImageError: not an ndarray of dtype uint8 and shape (H, W, 3) with H, W >= 1.
    """
    if not isinstance(image, np.ndarray):
        raise ImageError(f"{name} is a {type(image).__name__}, not an image array")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ImageError(f"{name} must be an HxWx3 uint8 BGR array, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


@contextlib.contextmanager
def _opencv_silenced() -> Iterator[None]:
    # OpenCV writes its own WARN/ERROR lines to stderr for a broken file; the
    # caller gets one ImageError instead (and the CLI one line per skipped
    # image). The previous level is restored, whatever it was.
    previous = cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(previous)


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, ...) to HxWx3 uint8 BGR.

    Grey images are expanded to three channels, alpha is dropped, 16-bit
    samples are scaled to 8 bits, and the EXIF orientation is applied (all by
    ``cv2.IMREAD_COLOR``), so a portrait photo is upright whichever way the
    camera stored it.

    Args:
        data: the encoded bytes.
        name: how to call the image in the message.

    Returns:
        The decoded image.

    Raises:
        ImageError: empty, or not in a format OpenCV decodes.
    """
    if not data:
        raise ImageError(f"{name} is empty")
    with _opencv_silenced():
        decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise ImageError(f"{name} is not an image OpenCV can decode")
    return check_image(np.asarray(decoded), name)


def load_image(source: ImageSource) -> np.ndarray:
    """Read an image file, or check an image array.

    Files are read with Python's ``open`` and decoded from memory, so that a
    missing file and an undecodable one give different messages
    (``cv2.imread`` returns None for both) and non-ASCII paths work.

    Args:
        source: a path, or an HxWx3 uint8 BGR array.

    Returns:
        HxWx3 uint8 BGR.

    Raises:
        ImageError: the file cannot be read or decoded, or the array is not
            HxWx3 uint8.
    """
    if isinstance(source, np.ndarray):
        return check_image(source)
    path = os.fspath(source)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ImageError(f"cannot read image {path}: {exc.strerror or type(exc).__name__}") from None
    return decode_image(data, f"image {path}")
