"""Face pipeline: images to L2-normalised templates, with onnxruntime.

image -> SCRFD face detection (:mod:`pprm.face.detect`) -> five-point
similarity alignment to a 112x112 crop (:mod:`pprm.face.align`) -> ArcFace
embedding (:mod:`pprm.face.embed`) -> unit float32 template, ready for
:meth:`pprm.KeyService.enroll` and :meth:`pprm.Requester.query`.

Images that are already aligned 112x112 crops go straight to the embedding
with ``aligned=True`` (:func:`pprm.face.align.aligned_crop`).

The models come from a folder the operator supplies (:mod:`pprm.face.pack`):
an insightface pack such as ``buffalo_l`` or ``buffalo_s``, or any folder
holding one SCRFD detector with keypoints and one ArcFace-style recognizer;
without one, ``~/.insightface/models/buffalo_l`` if it exists
(:data:`~pprm.face.pack.DEFAULT_PACK`). pprm never downloads weights. The
models run on onnxruntime's CPU provider unless ``providers`` names others
(:func:`pprm.face.session.check_providers`). InsightFace's pretrained weights are licensed
for non-commercial research only; a deployment supplies a recognizer it is
licensed to use, in a pack folder with the same interface.

This package needs the optional ``face`` extra (onnxruntime, onnx,
opencv-python-headless; insightface itself is not needed); nothing else in pprm imports it, so ``import pprm``
works without the extra. Importing it without the extra raises
:class:`pprm.errors.MissingExtraError`.

Example::

    from pprm.face import FacePipeline, load_models

    pipeline = FacePipeline(load_models("models/buffalo_l"))
    results = pipeline.embed(["a.jpg", "b.jpg"])      # largest face of each
    templates = results.templates()                   # (n, 512) float32, unit rows
    for skipped in results.skipped:                   # no face, unreadable, ...
        print(skipped.source, skipped.reason)
    crop = pipeline.embed_one("crop112.png", aligned=True)   # an already aligned crop
"""

from __future__ import annotations

from pprm.errors import MissingExtraError

try:
    import cv2  # noqa: F401  (imported to fail early with one clear message)
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
except ImportError as exc:
    raise MissingExtraError(
        f"the face pipeline needs the optional face extra ({exc.name or 'a dependency'} is missing): "
        'pip install "pprm[face]"'
    ) from None

from pprm.face.align import ARCFACE_LANDMARKS_112, align_face, aligned_crop, fit_similarity
from pprm.face.detect import Detection, Detector
from pprm.face.embed import Recognizer
from pprm.face.image import load_image
from pprm.face.pack import DEFAULT_PACK, KNOWN_PACKS, FaceModels, default_pack_folder, load_models
from pprm.face.pipeline import FacePipeline, FaceResult, FaceResults, SkippedImage
from pprm.face.session import DEFAULT_PROVIDERS, check_providers

__all__ = [
    "ARCFACE_LANDMARKS_112",
    "DEFAULT_PACK",
    "DEFAULT_PROVIDERS",
    "Detection",
    "Detector",
    "FaceModels",
    "FacePipeline",
    "FaceResult",
    "FaceResults",
    "KNOWN_PACKS",
    "Recognizer",
    "SkippedImage",
    "align_face",
    "aligned_crop",
    "check_providers",
    "default_pack_folder",
    "fit_similarity",
    "load_image",
    "load_models",
]
