"""Model packs: a folder with one SCRFD detector and one ArcFace recognizer, supplied by the operator.

pprm never downloads weights. A pack is found in one of two ways:

* by name, for insightface's packs: ``buffalo_l`` (``det_10g.onnx`` +
  ``w600k_r50.onnx``) and ``buffalo_s`` (``det_500m.onnx`` +
  ``w600k_mbf.onnx``); their other files (landmark, gender and age models)
  are ignored;
* otherwise by inspecting every ``.onnx`` file's session: the detector has
  one image input and score, box and keypoint outputs per pyramid level (9
  for insightface's three-level SCRFD), the recognizer one
  ``(N, 3, 112, 112)`` input and one 2-D output.

A folder must resolve to exactly one detector and one recognizer: templates
of different recognizers live in different spaces and must never be mixed in
one gallery, so an ambiguous folder is an error, not a choice.

Without a folder, :func:`load_models` takes :data:`DEFAULT_PACK`,
``~/.insightface/models/buffalo_l``: where insightface's own tools
(``FaceAnalysis``, ``insightface-cli model.download``) unpack ``buffalo_l``
under their default root ``~/.insightface``. insightface reads no environment
variable for that root, only the home directory (``os.path.expanduser``,
i.e. ``$HOME``), and neither does pprm.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pprm.errors import ModelPackError
from pprm.face.detect import Detector, _KeypointsMissing
from pprm.face.embed import Recognizer, check_interface
from pprm.face.session import check_providers, check_threads, open_session

__all__ = ["PackSpec", "KNOWN_PACKS", "OBTAIN", "DEFAULT_PACK", "FaceModels", "load_models", "expected_files",
           "default_pack_folder"]


@dataclass(frozen=True)
class PackSpec:
    """The two files pprm uses from a known insightface pack."""

    name: str
    detector: str
    recognizer: str

    def describe(self) -> str:
        """``buffalo_l (det_10g.onnx + w600k_r50.onnx)``."""
        return f"{self.name} ({self.detector} + {self.recognizer})"


# File names as insightface's model zoo packs them (buffalo_l.zip,
# buffalo_s.zip, release v0.7 of deepinsight/insightface); buffalo_sc.zip
# holds the same two files as buffalo_s.
KNOWN_PACKS = (
    PackSpec("buffalo_l", "det_10g.onnx", "w600k_r50.onnx"),
    PackSpec("buffalo_s", "det_500m.onnx", "w600k_mbf.onnx"),
)

OBTAIN = ("download buffalo_l.zip (or buffalo_s.zip) from the insightface model zoo release page yourself and "
          "unzip it, or supply a detector and recognizer you are licensed to use with the same interface; "
          "pprm never downloads weights")


# The pack folder used when none is given, before ``~`` is expanded:
# insightface's download location for buffalo_l (insightface.utils.storage,
# root ``~/.insightface``, sub-folder ``models/<name>``).
DEFAULT_PACK = os.path.join("~", ".insightface", "models", "buffalo_l")


def default_pack_folder() -> str | None:
    """:data:`DEFAULT_PACK` with ``~`` expanded, if that folder exists.

    Returns:
        The absolute folder, or None when it does not exist (or ``~`` cannot
        be expanded).
    """
    folder = os.path.expanduser(DEFAULT_PACK)
    return folder if not folder.startswith("~") and os.path.isdir(folder) else None


def expected_files() -> str:
    """What a pack folder must hold, in one line."""
    known = " or ".join(p.describe() for p in KNOWN_PACKS)
    return f"{known}, or one SCRFD detector with keypoints and one ArcFace recognizer (.onnx)"


@dataclass(frozen=True)
class FaceModels:
    """A loaded pack: the detector and recognizer sessions, checked.

    Attributes:
        folder: the pack folder.
        pack: the known pack's name, or ``custom`` for a folder resolved by
            inspection.
        detector: the SCRFD detector.
        recognizer: the ArcFace recognizer.
        detector_file: the detector's file name in ``folder``.
        recognizer_file: the recognizer's file name in ``folder``.
    """

    folder: str
    pack: str
    detector: Detector
    recognizer: Recognizer
    detector_file: str
    recognizer_file: str

    @property
    def dim(self) -> int:
        """Template dimension (512 for insightface's recognizers)."""
        return self.recognizer.dim

    @property
    def providers(self) -> list[str]:
        """The execution providers the recognizer's session runs on, as onnxruntime reports them."""
        return [str(p) for p in self.recognizer.session.get_providers()]

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary: pack folder and files, dimension, recognizer normalisation, providers."""
        return {"folder": self.folder, "pack": self.pack, "detector": self.detector_file,
                "recognizer": self.recognizer_file, "dim": self.dim, "input_mean": self.recognizer.mean,
                "input_std": self.recognizer.std, "providers": self.providers}


def _onnx_files(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder)
                  if f.lower().endswith(".onnx") and not f.startswith(".") and os.path.isfile(os.path.join(folder, f)))


def _by_inspection(folder: str, files: list[str], threads: int,
                   providers: tuple[str, ...]) -> tuple[Detector, Recognizer, str, str]:
    detectors: list[tuple[str, Detector]] = []
    recognizers: list[tuple[str, Any]] = []  # (file, session)
    rejected: list[str] = []
    for f in files:
        path = os.path.join(folder, f)
        session = open_session(path, threads, providers)
        try:
            detectors.append((f, Detector(session, f)))
            continue
        except _KeypointsMissing:
            rejected.append(f"{f} is an SCRFD detector without keypoints")
            continue
        except ModelPackError:
            pass
        try:
            # The session alone decides; the graph is parsed only for the one chosen.
            check_interface(session, f)
            recognizers.append((f, session))
        except ModelPackError:
            pass
    problems = []
    if len(detectors) != 1:
        problems.append(f"{len(detectors)} SCRFD detectors with keypoints"
                        + (f" ({', '.join(name for name, _ in detectors)})" if detectors else ""))
    if len(recognizers) != 1:
        problems.append(f"{len(recognizers)} ArcFace recognizers"
                        + (f" ({', '.join(name for name, _ in recognizers)})" if recognizers else ""))
    if problems:
        note = f"; {', '.join(rejected)}" if rejected else ""
        raise ModelPackError(f"model pack folder {folder} has {' and '.join(problems)} among its .onnx files"
                             f"{note}; expected exactly one of each: {expected_files()}; {OBTAIN}")
    det_file, detector = detectors[0]
    rec_file, rec_session = recognizers[0]
    return detector, Recognizer.from_session(rec_session, os.path.join(folder, rec_file)), det_file, rec_file


def load_models(folder: str | os.PathLike[str] | None = None, *, threads: int = 2,
                providers: Sequence[str] | None = None) -> FaceModels:
    """Load and check the detector and recognizer of a model pack folder.

    Args:
        folder: the pack folder (e.g. the unzipped ``buffalo_l``); None for
            :data:`DEFAULT_PACK`, ``~/.insightface/models/buffalo_l``.
        threads: onnxruntime intra-op threads per model.
        providers: onnxruntime execution providers in order of preference,
            e.g. ``["CUDAExecutionProvider", "CPUExecutionProvider"]``; None
            for the CPU provider. See :func:`pprm.face.session.check_providers`.

    Returns:
        The loaded models.

    Raises:
        ModelPackError: the folder is missing (or none was given and the
            default does not exist), holds no usable pair, holds an
            incomplete known pack, is ambiguous, or a model is corrupt or has
            the wrong interface. The message names the files expected and how
            to obtain them.
        ParameterError: ``threads`` is not a positive int, or a provider is
            not available in the installed onnxruntime.
    """
    check_threads(threads)
    chosen = check_providers(providers)
    if folder is None:
        default = default_pack_folder()
        if default is None:
            raise ModelPackError(f"no model pack folder given, and the default {DEFAULT_PACK} does not exist; "
                                 f"expected {expected_files()}; {OBTAIN}")
        folder = default
    root = os.fspath(folder)
    if not os.path.isdir(root):
        raise ModelPackError(f"model pack folder {root} does not exist; expected {expected_files()}; {OBTAIN}")
    files = _onnx_files(root)
    present = set(files)
    complete = [p for p in KNOWN_PACKS if {p.detector, p.recognizer} <= present]
    if len(complete) > 1:
        raise ModelPackError(f"model pack folder {root} holds several packs ({', '.join(p.name for p in complete)});"
                             " their templates are not comparable: keep one pack per folder")
    if complete:
        spec = complete[0]
        detector = Detector.load(os.path.join(root, spec.detector), threads=threads, providers=chosen)
        recognizer = Recognizer.load(os.path.join(root, spec.recognizer), threads=threads, providers=chosen)
        return FaceModels(root, spec.name, detector, recognizer, spec.detector, spec.recognizer)
    if not files:
        raise ModelPackError(f"model pack folder {root} holds no .onnx files; expected {expected_files()}; {OBTAIN}")
    partial = [p for p in KNOWN_PACKS if {p.detector, p.recognizer} & present]
    try:
        detector, recognizer, det_file, rec_file = _by_inspection(root, files, threads, chosen)
    except ModelPackError:
        if partial:
            spec = partial[0]
            missing = spec.recognizer if spec.detector in present else spec.detector
            raise ModelPackError(f"model pack {root} is incomplete: {spec.name} needs {spec.detector} and "
                                 f"{spec.recognizer}, {missing} is missing; {OBTAIN}") from None
        raise
    return FaceModels(root, "custom", detector, recognizer, det_file, rec_file)
