"""``pprm embed``, ``pprm enroll --images`` and ``pprm query --image``: the face pipeline on the command line.

:mod:`pprm.face` (and with it onnxruntime, onnx and OpenCV, the optional
``face`` extra) is imported only when one of these actually runs, so the
other verbs, ``pprm --help`` included, start without it; without the extra
they fail with one line saying ``pip install "pprm[face]"``.

An image that cannot be read or shows no face is reported on stderr (one
``pprm: skipped: ...`` line each) and left out; the batch goes on. When no
image at all yields a template the command fails and writes nothing.

``--aligned`` takes images that are already aligned 112x112 crops (or squares
of a multiple of 112) and embeds them without detection or alignment; any
other size fails the command with one line naming the file. ``--providers``
picks onnxruntime's execution providers (default ``CPUExecutionProvider``).
Without ``--models``, the pack folder is ``~/.insightface/models/buffalo_l``
when it exists (where insightface unpacks ``buffalo_l``); otherwise
``--models`` is required, as before.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import functools
import io
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pprm.cli.common import EXIT_OK, AddVerb, AtomicOutput, Verbs, emit, int_at_least, read_utf8
from pprm.cli.progress import ProgressBar
from pprm.errors import NoFaceError, TemplateError
from pprm.matching.templates import validate_references

if TYPE_CHECKING:  # only for annotations: importing pprm.face loads onnxruntime
    from pprm.face import FaceModels, FacePipeline, FaceResults
    from pprm.node.state import State

__all__ = ["VERBS", "add_embed_args", "add_enroll_args", "add_query_args", "cmd_embed", "templates_from_folder",
           "probe_from_image", "skipped_report", "default_models", "parse_providers", "DEFAULT_THREADS",
           "DEFAULT_MODELS"]

# onnxruntime intra-op threads per model unless --threads says otherwise.
DEFAULT_THREADS = 2

# The pack folder when --models is not given and it exists. The same value as
# pprm.face.pack.DEFAULT_PACK (a test keeps them equal), repeated here because
# parsing must not import pprm.face: that loads onnxruntime and OpenCV, and
# fails without the face extra.
DEFAULT_MODELS = os.path.join("~", ".insightface", "models", "buffalo_l")

# onnxruntime's execution provider unless --providers names others.
_DEFAULT_PROVIDER = "CPUExecutionProvider"


# -- parser -----------------------------------------------------------------------

def default_models() -> str | None:
    """:data:`DEFAULT_MODELS` with ``~`` expanded (from ``$HOME``, as insightface does), if that folder exists.

    Returns:
        The folder, or None.
    """
    folder = os.path.expanduser(DEFAULT_MODELS)
    return folder if not folder.startswith("~") and os.path.isdir(folder) else None


def parse_providers(text: str) -> list[str]:
    """The value of ``--providers``: comma-separated onnxruntime execution provider names.

    Only the form is checked here; whether the installed onnxruntime offers
    them is checked when the models are loaded
    (:func:`pprm.face.session.check_providers`), which lists the ones it does.

    Args:
        text: e.g. ``CUDAExecutionProvider,CPUExecutionProvider``.

    Returns:
        The names, in order.

    Raises:
        argparse.ArgumentTypeError: an empty name.
    """
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated execution provider names, got {text!r}")
    return names


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default=None, metavar="DIR",
                   help="model pack folder: buffalo_l (det_10g.onnx + w600k_r50.onnx), buffalo_s (det_500m.onnx + "
                        "w600k_mbf.onnx), or one SCRFD detector and one ArcFace recognizer (default: "
                        f"{DEFAULT_MODELS} if it exists); pprm never downloads weights")
    p.add_argument("--threads", type=int_at_least(1), default=DEFAULT_THREADS,
                   help=f"onnxruntime threads per model (default {DEFAULT_THREADS})")
    p.add_argument("--providers", type=parse_providers, default=None, metavar="LIST",
                   help="comma-separated onnxruntime execution providers, in order of preference (default "
                        f"{_DEFAULT_PROVIDER}); one the installed onnxruntime lacks is an error listing those it has")


def _aligned_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--aligned", action="store_true",
                   help=f"{what} already aligned 112x112 face crops (or squares of a multiple of 112, downscaled): "
                        "no detection or alignment; any other size is an error")


def _resolve_models(p: argparse.ArgumentParser, args: argparse.Namespace, missing: str) -> None:
    """Fill in the default pack folder when ``--models`` is absent; a usage error when there is none."""
    if args.models is None:
        args.models = default_models()
        if args.models is None:
            p.error(f"{missing} (there is no default pack folder {DEFAULT_MODELS})")


def add_embed_args(p: argparse.ArgumentParser) -> None:
    """Add the arguments of ``pprm embed``.

    Args:
        p: the verb's parser.
    """
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    _model_args(p)
    p.add_argument("--out", required=True, help=".npy file to write, shape (N, dim) float32, unit rows")
    p.add_argument("--refs-out", default=None,
                   help="also write one reference per template: the image file name, plus #k for face k > 0")
    p.add_argument("--all-faces", action="store_true",
                   help="every face of each image, largest first (default: the largest face only)")
    _aligned_arg(p, "the images are")
    p.set_defaults(check=functools.partial(_check_embed, p))


def add_enroll_args(p: argparse.ArgumentParser) -> None:
    """Add the image inputs of ``pprm enroll`` (:mod:`pprm.cli.state_cmds` adds ``--templates``/``--refs``).

    Args:
        p: the verb's parser; its ``check`` default refuses the combinations
            of inputs that do not go together (a usage error).
    """
    p.add_argument("--images", default=None, metavar="FOLDER",
                   help="enrol the largest face of every image in FOLDER (.jpg .jpeg .png .bmp .webp .tif .tiff); "
                        "instead of --templates/--refs, needs --models")
    p.add_argument("--refs-csv", default=None, metavar="MAP_CSV",
                   help="with --images: CSV with the columns file,reference naming every image's reference "
                        "(default: the file name without its extension)")
    _model_args(p)
    _aligned_arg(p, "with --images: the images are")
    p.set_defaults(check=functools.partial(_check_enroll, p))


def add_query_args(p: argparse.ArgumentParser) -> None:
    """Add the image input of ``pprm query`` (:mod:`pprm.cli.flow_cmds` adds ``--probe``).

    Args:
        p: the verb's parser; its ``check`` default refuses the combinations
            of inputs that do not go together (a usage error).
    """
    p.add_argument("--image", default=None, metavar="FILE",
                   help="probe with the largest face in this image instead of --probe; needs --models (or the "
                        "default pack folder)")
    _model_args(p)
    _aligned_arg(p, "with --image: the image is")
    p.set_defaults(check=functools.partial(_check_query, p))


def _check_embed(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    _resolve_models(p, args, "the following arguments are required: --models")


def _check_enroll(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from_files = args.templates is not None or args.refs is not None
    from_images = args.images is not None or args.models is not None
    if from_files and from_images:
        p.error("--templates/--refs and --images/--models are mutually exclusive")
    if from_files and (args.templates is None or args.refs is None):
        p.error("--templates and --refs go together")
    if args.models is not None and args.images is None:
        p.error("--images and --models go together")
    if not (from_files or from_images):
        p.error("give --templates and --refs, or --images and --models")
    if args.refs_csv is not None and args.images is None:
        p.error("--refs-csv goes with --images")
    if args.aligned and args.images is None:
        p.error("--aligned goes with --images")
    if args.images is not None:
        _resolve_models(p, args, "--images needs --models")


def _check_query(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from_image = args.image is not None or args.models is not None
    if args.probe is not None and from_image:
        p.error("--probe and --image/--models are mutually exclusive")
    if args.probe is None and args.image is None:
        p.error("give --probe, or --image and --models")
    if args.aligned and args.image is None:
        p.error("--aligned goes with --image")
    if args.image is not None:
        _resolve_models(p, args, "--image needs --models")


# -- shared steps --------------------------------------------------------------------

def _load(args: argparse.Namespace, st: State | None = None) -> FacePipeline:
    from pprm.face import FacePipeline, load_models

    models = load_models(args.models, threads=args.threads, providers=getattr(args, "providers", None))
    if st is not None:
        _check_dim(models, st)
    return FacePipeline(models)


def _check_dim(models: FaceModels, st: State) -> None:
    if models.dim != st.config.dim:
        raise TemplateError(f"the recognizer {models.recognizer_file} makes templates of dimension {models.dim}, "
                            f"state {st.config.name} holds dimension {st.config.dim}")


def _embed(pipeline: FacePipeline, paths: Sequence[str], *, all_faces: bool = False,
           aligned: bool = False) -> FaceResults:
    with ProgressBar("embedding", unit="images") as bar:
        return pipeline.embed(paths, all_faces=all_faces, aligned=aligned, progress=bar.callback)


def skipped_report(results: FaceResults) -> list[dict[str, str]]:
    """Print one ``pprm: skipped: ...`` line per skipped image on stderr; return them JSON-ready.

    Args:
        results: a batch's results.

    Returns:
        ``[{"image": source, "reason": reason}, ...]``.
    """
    for s in results.skipped:
        print(f"pprm: skipped: {s.reason}", file=sys.stderr)
    return [{"image": s.source, "reason": s.reason} for s in results.skipped]


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


# -- pprm embed --------------------------------------------------------------------------

def _embed_ref(path: str, face_index: int) -> str:
    name = os.path.basename(path)
    return name if face_index == 0 else f"{name}#{face_index}"


def cmd_embed(args: argparse.Namespace) -> int:
    """``pprm embed``: templates of the faces in images, to a .npy (and references) written atomically.

    Args:
        args: the parsed ``embed`` arguments.

    Returns:
        :data:`~pprm.cli.common.EXIT_OK`.

    Raises:
        NoFaceError: no image yielded a template (nothing is written).
        ImageError: with ``--aligned``, an image that is not an aligned crop's
            size (nothing is written).
        TemplateError: file names that cannot be references (with ``--refs-out``).
        ModelPackError: see :func:`pprm.face.load_models`.
        ParameterError: an execution provider onnxruntime does not offer.
        OSError: an output cannot be written.
    """
    if args.refs_out is not None:
        # Before any work: file names that cannot be references (duplicates
        # from two folders, control characters) fail now, not after embedding.
        validate_references([_embed_ref(p, 0) for p in args.images], len(args.images))
    pipeline = _load(args)
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(AtomicOutput(args.out))
        refs_out = stack.enter_context(AtomicOutput(args.refs_out)) if args.refs_out is not None else None
        results = _embed(pipeline, args.images, all_faces=args.all_faces, aligned=args.aligned)
        skipped = skipped_report(results)
        if not results:
            raise NoFaceError(f"no face found in any of the {len(args.images)} image(s); nothing written")
        refs = validate_references([_embed_ref(r.source, r.face_index) for r in results], len(results))
        out.write(_npy_bytes(results.templates()))
        if refs_out is not None:
            refs_out.write("".join(f"{r}\n" for r in refs).encode("utf-8"))
            refs_out.commit()
        out.commit()
    report: dict[str, Any] = {"out": out.path, "templates": len(results), "dim": pipeline.dim,
                              "refs_out": refs_out.path if refs_out is not None else None,
                              "images": len(args.images), "skipped": skipped, "models": pipeline.models.describe()}
    text = (f"embedded {len(results)} {'aligned crop' if args.aligned else 'face'}(s) from {len(args.images)} "
            f"image(s) into {args.out} (pack {pipeline.models.pack}, dimension {pipeline.dim})")
    if skipped:
        text += f"; {len(skipped)} skipped"
    emit(args, report, text)
    return EXIT_OK


# -- pprm enroll --images ------------------------------------------------------------------

def _valid_reference(reference: str) -> bool:
    """One reference on its own passes :func:`validate_references` (whose messages count rows, not lines)."""
    try:
        validate_references([reference], 1)
    except TemplateError:
        return False
    return True


def _read_refs_csv(path: str, folder: str, names: Sequence[str]) -> dict[str, str]:
    """File name -> reference, every image in ``folder`` listed exactly once.

    Strict on purpose: enrolment creates biometric records, so an image
    without a mapping, or a mapping without its image, is an error rather
    than something silently left out.

    Raises:
        TemplateError: not UTF-8, not CSV, no ``file,reference`` header, an
            unknown or repeated file, an image without a row.
        OSError: the file cannot be read.
    """
    text = read_utf8(path, "references CSV", encoding="utf-8-sig")
    known = set(names)
    mapping: dict[str, str] = {}
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if reader.fieldnames is None or not {"file", "reference"} <= {f.strip().lower() for f in reader.fieldnames}:
            raise TemplateError(f"references CSV {path} needs a header row with the columns file,reference")
        reader.fieldnames = [f.strip().lower() for f in reader.fieldnames]
        for row in reader:
            file = (row.get("file") or "").strip()
            where = f"references CSV {path} line {reader.line_num}"
            if file not in known:
                raise TemplateError(f"{where}: {file!r} is not an image file in {folder}")
            if file in mapping:
                raise TemplateError(f"{where}: {file!r} is listed twice")
            reference = row.get("reference") or ""
            if not _valid_reference(reference):
                raise TemplateError(f"{where}: reference {reference!r} is empty, too long or not printable")
            mapping[file] = reference
    except csv.Error as exc:
        raise TemplateError(f"references CSV {path} is malformed: {exc}") from None
    missing = [n for n in names if n not in mapping]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise TemplateError(f"references CSV {path} has no row for {missing[0]!r}{more} in {folder}")
    return mapping


def templates_from_folder(args: argparse.Namespace, st: State) -> tuple[np.ndarray, list[str], list[dict[str, str]]]:
    """Templates and references for ``pprm enroll --images FOLDER --models DIR [--refs-csv MAP]``.

    The references are checked (against each other and the gallery) and the
    models loaded before any image is embedded.

    Args:
        args: the parsed ``enroll`` arguments.
        st: the enrolling state.

    Returns:
        ``(templates, references, skipped)``: one template per image with a
        face, its reference, and the skipped images (already reported on
        stderr).

    Raises:
        NoFaceError: no image yielded a template.
        ImageError: the folder holds no image files; with ``--aligned``, an
            image that is not an aligned crop's size.
        TemplateError: bad references or CSV, or a recognizer of the wrong dimension.
        ModelPackError: see :func:`pprm.face.load_models`.
        ParameterError: an execution provider onnxruntime does not offer.
        OSError: the folder or the CSV cannot be read.
    """
    from pprm.errors import ImageError
    from pprm.face.image import IMAGE_SUFFIXES

    folder = args.images
    if not os.path.isdir(folder):
        code = errno.ENOTDIR if os.path.exists(folder) else errno.ENOENT
        raise OSError(code, os.strerror(code), folder)
    names = sorted(f for f in os.listdir(folder) if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES)
                   and os.path.isfile(os.path.join(folder, f)))
    if not names:
        raise ImageError(f"no image files ({' '.join(IMAGE_SUFFIXES)}) in {folder}")
    if args.refs_csv is not None:
        mapping = _read_refs_csv(args.refs_csv, folder, names)
    else:
        mapping = {n: os.path.splitext(n)[0] for n in names}
        for name, reference in mapping.items():
            if not _valid_reference(reference):
                raise TemplateError(f"image {name} in {folder}: its file name cannot be a reference (empty, too "
                                    "long or not printable); map it with --refs-csv")
    # Duplicates, within the folder and against the gallery, before any image is embedded.
    validate_references([mapping[n] for n in names], len(names), st.gallery().index.references.values())
    pipeline = _load(args, st)
    results = _embed(pipeline, [os.path.join(folder, n) for n in names], aligned=getattr(args, "aligned", False))
    skipped = skipped_report(results)
    if not results:
        raise NoFaceError(f"no face found in any of the {len(names)} image(s) in {folder}; nothing enrolled")
    return results.templates(), [mapping[names[r.image_index]] for r in results], skipped


# -- pprm query --image -----------------------------------------------------------------------

def probe_from_image(args: argparse.Namespace, st: State) -> np.ndarray:
    """The probe of ``pprm query --image FILE --models DIR``: the largest face's template.

    Args:
        args: the parsed ``query`` arguments.
        st: the querying state (its dimension must match the recognizer's).

    Returns:
        The template, of the state's dimension.

    Raises:
        ImageError: the image cannot be read; with ``--aligned``, it is not
            an aligned crop's size.
        NoFaceError: it shows no usable face.
        TemplateError: a recognizer of the wrong dimension.
        ModelPackError: see :func:`pprm.face.load_models`.
        ParameterError: an execution provider onnxruntime does not offer.
    """
    return _load(args, st).embed_one(args.image, aligned=getattr(args, "aligned", False))


def _add_embed(verbs: Verbs) -> None:
    p = verbs.add("embed", cmd_embed, "detect, align and embed the faces in images into a .npy of templates")
    add_embed_args(p)


# Verb name -> the function adding it; pprm.cli.main chooses the order.
VERBS: dict[str, AddVerb] = {"embed": _add_embed}
