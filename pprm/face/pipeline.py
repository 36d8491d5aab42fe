"""The face pipeline: images to templates (detect, align, embed), batch-tolerant.

One bad image does not stop a batch: an unreadable file, an image without a
face or a face whose landmarks cannot be aligned becomes a
:class:`SkippedImage` with a one-line reason, and the rest go on. Model
failures do stop it (they are not a property of one image).

Inputs that are already aligned 112x112 crops skip detection and alignment
with ``aligned=True`` (:meth:`FacePipeline.embed`, :meth:`FacePipeline.embed_one`;
``pprm embed --aligned``): SCRFD does not find a face that fills the whole
image, so such a crop would otherwise be reported as "no face found". An
input that is not a crop of that geometry stops the batch with an
:class:`~pprm.errors.ImageError` (see :func:`pprm.face.align.aligned_crop`):
the caller's claim that the inputs are aligned is wrong, and a photo
embedded as if it were a crop would be a template of nobody.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from pprm.errors import AlignmentError, ImageError, NoFaceError, ParameterError
from pprm.face.align import ARCFACE_LANDMARKS_112, CROP_SIZE, align_face, aligned_crop
from pprm.face.detect import NMS_IOU, Detection
from pprm.face.image import ImageSource, load_image, source_name
from pprm.face.pack import FaceModels

__all__ = ["FaceResult", "SkippedImage", "FaceResults", "FacePipeline", "DEFAULT_DET_SIZE",
           "DEFAULT_DET_THRESHOLD"]

# insightface's FaceAnalysis defaults: SCRFD at 640x640, faces scoring 0.5 or more.
DEFAULT_DET_SIZE = (640, 640)
DEFAULT_DET_THRESHOLD = 0.5


@dataclass(frozen=True)
class FaceResult:
    """One embedded face.

    Attributes:
        source: the image path, or ``<array i>`` for an array input.
        image_index: position of the image in the input sequence.
        face_index: rank of the face in its image by box area, 0 the largest.
        bbox: ``(x1, y1, x2, y2)`` in image pixels; for an aligned input
            (``aligned=True``) the whole image.
        det_score: detector confidence; NaN for an aligned input (no
            detector ran).
        landmarks: ``(5, 2)`` float32 in image pixels; for an aligned input
            the reference landmarks the alignment put the face on
            (:data:`~pprm.face.align.ARCFACE_LANDMARKS_112`, scaled to the
            image's side).
        template: ``(dim,)`` float32 of unit L2 norm.
    """

    source: str
    image_index: int
    face_index: int
    bbox: tuple[float, float, float, float]
    det_score: float
    landmarks: np.ndarray = field(repr=False)
    template: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class SkippedImage:
    """An image (or one face of it) that yielded no template, and why (one line)."""

    source: str
    image_index: int
    reason: str


class FaceResults(list[FaceResult]):
    """The faces embedded from a batch, in input order, and what was skipped.

    Attributes:
        skipped: images (or faces) that gave no template, in input order.
        dim: the template dimension.
    """

    def __init__(self, results: Iterable[FaceResult] = (), skipped: Iterable[SkippedImage] = (), *,
                 dim: int) -> None:
        super().__init__(results)
        self.skipped: list[SkippedImage] = list(skipped)
        self.dim = dim

    def templates(self) -> np.ndarray:
        """``(n, dim)`` float32, one unit row per result (``(0, dim)`` if none)."""
        if not self:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([r.template for r in self]).astype(np.float32, copy=False)


def _largest_first(faces: list[Detection]) -> list[Detection]:
    # Largest box first; ties (identical areas) go to the higher score.
    return sorted(faces, key=lambda d: (-d.area, -d.score))


def _whole_crop(image: np.ndarray) -> Detection:
    """What an aligned input reports in place of a detection: the whole image, no score."""
    side = float(image.shape[1])
    landmarks = (ARCFACE_LANDMARKS_112 * (side / CROP_SIZE)).astype(np.float32)
    return Detection(bbox=np.array([0.0, 0.0, side, float(image.shape[0])], np.float32), score=float("nan"),
                     landmarks=landmarks)


@dataclass
class _Pending:
    """Aligned crops waiting for the recognizer, with what each result will carry."""

    crops: list[np.ndarray] = field(default_factory=list)
    meta: list[tuple[str, int, int, Detection]] = field(default_factory=list)


class FacePipeline:
    """Detect, align and embed faces with a loaded model pack.

    Args:
        models: from :func:`pprm.face.load_models`.
        det_size: detector input ``(width, height)``; images are letterboxed
            into it. Multiples of the detector's largest stride (32).
        det_threshold: minimum detector score, in (0, 1).
        nms_threshold: NMS overlap limit, in (0, 1].

    Raises:
        ParameterError: a setting is out of range or does not fit the detector.
    """

    def __init__(self, models: FaceModels, *, det_size: tuple[int, int] = DEFAULT_DET_SIZE,
                 det_threshold: float = DEFAULT_DET_THRESHOLD, nms_threshold: float = NMS_IOU) -> None:
        if not 0.0 < float(det_threshold) < 1.0:
            raise ParameterError(f"det_threshold must be in (0, 1), got {det_threshold}")
        if not 0.0 < float(nms_threshold) <= 1.0:
            raise ParameterError(f"nms_threshold must be in (0, 1], got {nms_threshold}")
        if len(det_size) != 2:
            raise ParameterError(f"det_size must be (width, height), got {det_size!r}")
        self.models = models
        self.det_size = models.detector.check_size(det_size)
        self.det_threshold = float(det_threshold)
        self.nms_threshold = float(nms_threshold)

    def __repr__(self) -> str:
        return (f"FacePipeline(pack={self.models.pack!r}, det_size={self.det_size}, "
                f"det_threshold={self.det_threshold})")

    @property
    def dim(self) -> int:
        """Template dimension."""
        return self.models.dim

    def detect(self, image: ImageSource) -> list[Detection]:
        """Faces in one image, largest box first.

        Args:
            image: a path or an HxWx3 uint8 BGR array.

        Returns:
            The detections in image pixels, by box area, largest first.

        Raises:
            ImageError: unreadable or not an HxWx3 uint8 array.
            ModelPackError: the detector fails.
        """
        return _largest_first(self.models.detector.detect(load_image(image), size=self.det_size,
                                                          threshold=self.det_threshold,
                                                          nms_iou=self.nms_threshold))

    def embed(self, images: Iterable[ImageSource], *, all_faces: bool = False, aligned: bool = False,
              batch_size: int = 8, progress: Callable[[int, int], None] | None = None) -> FaceResults:
        """Templates of the faces in ``images``.

        Images are read and detected one at a time; aligned crops are
        embedded ``batch_size`` at a time, so memory stays bounded by one image
        and one batch of crops.

        Args:
            images: paths or HxWx3 uint8 BGR arrays.
            all_faces: every face of each image, largest first, instead of
                only the largest (by box area). The largest alone is the
                right choice for enrolment and probes: a bystander in the
                background must not become a record.
            aligned: the images are already ArcFace-aligned crops, 112x112
                (or squares whose side is a multiple of 112, downscaled):
                no detection and no alignment, each image is one face. See
                :func:`pprm.face.align.aligned_crop`.
            batch_size: crops per recognizer pass.
            progress: called with ``(images done, images in total)``.

        Returns:
            The results in input order (image, then face rank), and the
            skipped images with their reasons.

        Raises:
            ImageError: with ``aligned``, a readable image that is not an
                aligned crop's size (the whole batch stops; unreadable images
                are still skipped).
            ModelPackError: a model fails.
            ParameterError: bad ``batch_size``.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ParameterError(f"batch_size must be a positive integer, got {batch_size!r}")
        sources = list(images)
        return self._run([(source_name(s, i), s) for i, s in enumerate(sources)], all_faces, batch_size, progress,
                         aligned=aligned)

    def embed_one(self, image: ImageSource, *, aligned: bool = False) -> np.ndarray:
        """The template of the largest face in one image.

        Args:
            image: a path or an HxWx3 uint8 BGR array.
            aligned: the image is already an aligned crop; see :meth:`embed`.

        Returns:
            ``(dim,)`` float32 of unit norm.

        Raises:
            ImageError: unreadable or not an HxWx3 uint8 array; with
                ``aligned``, not an aligned crop's size.
            NoFaceError: no face, or the largest face cannot be aligned.
            ModelPackError: a model fails.
        """
        name = source_name(image, 0)
        pixels = load_image(image)  # unreadable is an ImageError here, not a skip
        results = self._run([(name, pixels)], False, 1, None, aligned=aligned)
        if not results:
            raise NoFaceError(results.skipped[0].reason)
        return results[0].template

    def _run(self, items: list[tuple[str, ImageSource]], all_faces: bool, batch_size: int,
             progress: Callable[[int, int], None] | None, *, aligned: bool = False) -> FaceResults:
        results = FaceResults(dim=self.dim)
        pending = _Pending()
        for index, (name, source) in enumerate(items):
            try:
                image = load_image(source)
            except ImageError as exc:
                results.skipped.append(SkippedImage(name, index, str(exc)))
                self._report(progress, index + 1, len(items))
                continue
            if aligned:
                pending.crops.append(aligned_crop(image, name if name.startswith("<") else f"image {name}"))
                pending.meta.append((name, index, 0, _whole_crop(image)))
                if len(pending.crops) >= batch_size:
                    self._flush(pending, results, batch_size)
                self._report(progress, index + 1, len(items))
                continue
            faces = self.detect(image)
            if not faces:
                results.skipped.append(SkippedImage(name, index, f"no face found in {name}"))
            for rank, face in enumerate(faces if all_faces else faces[:1]):
                try:
                    pending.crops.append(align_face(image, face.landmarks))
                except AlignmentError as exc:
                    # A degenerate largest face is skipped, not replaced by the
                    # next one: that could be someone else.
                    results.skipped.append(SkippedImage(name, index, f"face {rank} in {name}: {exc}"))
                    continue
                pending.meta.append((name, index, rank, face))
                if len(pending.crops) >= batch_size:
                    self._flush(pending, results, batch_size)
            self._report(progress, index + 1, len(items))
        self._flush(pending, results, batch_size)
        return results

    def _flush(self, pending: _Pending, results: FaceResults, batch_size: int) -> None:
        if not pending.crops:
            return
        crops = np.stack(pending.crops).reshape(-1, CROP_SIZE, CROP_SIZE, 3)
        templates = self.models.recognizer.embed(crops, batch_size=batch_size)
        for (name, index, rank, face), template in zip(pending.meta, templates, strict=True):
            x1, y1, x2, y2 = (float(v) for v in face.bbox)
            results.append(FaceResult(name, index, rank, (x1, y1, x2, y2), face.score, face.landmarks, template))
        pending.crops.clear()
        pending.meta.clear()

    @staticmethod
    def _report(progress: Callable[[int, int], None] | None, done: int, total: int) -> None:
        if progress is not None:
            progress(done, total)
