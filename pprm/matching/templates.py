"""Validation of face templates and their reference strings.

Templates are L2-normalised float32 rows; the score between two templates is
their inner product (cosine similarity). Every check raises
:class:`~pprm.errors.TemplateError` with one line saying which row or
reference failed, and why.

How messages number things, everywhere in pprm: a row of an array and an item
of a list are named by their Python index, from 0 (``template row 5``,
``reference at index 5``), the number that ``templates[5]`` or ``refs[5]``
takes to look at it; a line of a text file is numbered from 1 (``line 6``),
as editors and ``grep -n`` count. The two never mix in one message. A
reference that is itself invalid is named by its index first (its text may
be empty or unprintable): ``reference at index 6 ('DE 7 ') has leading or
trailing whitespace``; a valid one by its text, the index after it:
``reference 'DE-7' is already enrolled (at index 6)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from pprm.errors import TemplateError

__all__ = [
    "check_rows",
    "normalise_templates",
    "normalise_probe",
    "reference_list",
    "validate_references",
    "shown_reference",
    "reference_problem",
    "MAX_REFERENCE_LENGTH",
]

# References are national record identifiers, not free text; 128 characters
# covers every format we know of and keeps indexes and tokens small.
MAX_REFERENCE_LENGTH = 128
# How much of a bad reference a message shows: enough to find it in a list,
# not a whole over-long one.
_SHOWN = 40


# Rows and references are numbered by the rule in the module docstring: a
# Python index, from 0; only lines of files count from 1.
def check_rows(rows: object, dim: int, *, noun: str, first: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Refuse an N x dim array whose shape, type or any row is unusable (rows numbered from 0).

    The one set of row checks for everything that takes template rows:
    galleries (``noun="template"``) and batches of probes (``noun="probe"``).

    Args:
        rows: array-like of shape ``(N, dim)``, N >= 1, floating point.
        dim: the dimension each row must have.
        noun: what a row is, for messages (``"template"``, ``"probe"``).
        first: the number of ``rows[0]`` in messages, when ``rows`` is a
            slice of a larger array.

    Returns:
        ``(rows as float64[N, dim], their L2 norms float64[N])``: a new
        array, the input is not modified.

    Raises:
        TemplateError: wrong shape or dimension, no rows, not floating point,
            a row with a non-finite value, a zero (or near-zero) row; the
            message names the first such row.
    """
    arr = _checked_array(rows, dim, noun)
    arr64 = arr.astype(np.float64)
    bad = ~np.isfinite(arr64).all(axis=1)
    if bad.any():
        raise TemplateError(f"{noun} row {first + int(np.argmax(bad))} has a non-finite value")
    norms = np.linalg.norm(arr64, axis=1)
    zero = norms < 1e-12
    if zero.any():
        raise TemplateError(f"{noun} row {first + int(np.argmax(zero))} is a zero vector")
    return arr64, norms


def _checked_array(rows: object, dim: int, noun: str) -> np.ndarray:
    """The shape and type checks of :func:`check_rows`."""
    arr = np.asarray(rows)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise TemplateError(f"{noun}s must have shape (N, {dim}), one {noun} per row; got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise TemplateError(f"no {noun}s given (the array has no rows)")
    if not np.issubdtype(arr.dtype, np.floating):
        raise TemplateError(f"{noun}s must be floating point, got {arr.dtype}")
    return arr


# Rows checked and normalised at a time: the float64 working copy (8 MiB at
# d = 512) stays in cache and is reused, where a whole-gallery copy cost more
# in first-touch page faults than in arithmetic (2.3 s against 0.2 s for
# 81,920 x 512 on the 2-core Xeon VM).
_CHUNK_ROWS = 2048


def normalise_templates(templates: np.ndarray, dim: int) -> np.ndarray:
    """Check an N x dim array and return it L2-normalised as float32.

    Args:
        templates: array of shape ``(N, dim)``.
        dim: the gallery dimension.

    Returns:
        A new C-contiguous float32 array of unit rows.

    Raises:
        TemplateError: as :func:`check_rows` (``template row 5 is a zero vector``).
    """
    arr = _checked_array(templates, dim, "template")
    out = np.empty(arr.shape, dtype=np.float32)
    for start in range(0, arr.shape[0], _CHUNK_ROWS):
        arr64, norms = check_rows(arr[start:start + _CHUNK_ROWS], dim, noun="template", first=start)
        np.divide(arr64, norms[:, None], out=arr64)
        out[start:start + _CHUNK_ROWS] = arr64
    return out


def normalise_probe(probe: np.ndarray, dim: int) -> np.ndarray:
    """Check one probe template and return it L2-normalised as float32.

    Args:
        probe: shape ``(dim,)`` or ``(1, dim)``.
        dim: the dimension the matcher expects.

    Returns:
        A new float32 unit vector of shape ``(dim,)``.

    Raises:
        TemplateError: not one template of dimension ``dim``, or as
            :func:`check_rows` (``probe row 0 is a zero vector``).

    Warning:
        Probes are always normalised: an unnormalised or scaled probe would
        turn the threshold into an oracle on gallery coordinates.
    """
    arr = np.asarray(probe)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] != 1 or arr.shape[1] != dim:
        raise TemplateError(f"a probe must be one template of dimension {dim}, got shape {np.asarray(probe).shape}")
    arr64, norms = check_rows(arr, dim, noun="probe")
    return (arr64[0] / norms[0]).astype(np.float32)


def shown_reference(value: str) -> str:
    """A reference as messages show it: ``repr``, cut to about 40 characters.

    Args:
        value: the reference (valid or not).

    Returns:
        ``repr(value)``, or the repr of its first 40 characters followed by
        ``...`` when it is longer; control characters appear escaped.
    """
    if len(value) <= _SHOWN:
        return repr(value)
    return f"{value[:_SHOWN]!r}..."


def reference_list(references: object, what: str = "references") -> list[str]:
    """Check that ``references`` is a sequence of strings, and return it as a list.

    The one door for references into pprm (enrolment, removal, and the key
    service's link): nothing is ever converted with ``str()``, which would
    enrol ``b'x'`` as ``"b'x'"`` and ``None`` as ``"None"``.

    Args:
        references: a list, tuple or other sequence of ``str`` (a 1-d numpy
            array of strings too). Not a single string, not a generator, set
            or dict: their length or order is not the caller's rows.
        what: how messages name the whole (``"references"``).

    Returns:
        A new list of plain ``str``.

    Raises:
        TemplateError: not a sequence, or an item that is not a string (the
            message names its index and type).
    """
    if isinstance(references, (str, bytes, bytearray)):
        raise TemplateError(f"{what} must be a list of strings, got one {type(references).__name__}")
    if isinstance(references, np.ndarray):
        if references.ndim != 1:
            raise TemplateError(f"{what} must be a list of strings, got an array of shape {references.shape}")
        items: Sequence[object] = references.tolist()
    elif isinstance(references, Sequence):
        items = references
    else:
        # A generator would be used up by the checks; a set has no order to match the template rows.
        raise TemplateError(f"{what} must be a list of strings, got {type(references).__name__}")
    out: list[str] = []
    for i, ref in enumerate(items):
        if not isinstance(ref, str):
            raise TemplateError(f"reference at index {i} is {type(ref).__name__}, not str")
        out.append(str(ref))  # a str subclass (numpy.str_) becomes a plain str
    return out


def reference_problem(ref: str) -> str | None:
    """What is wrong with one reference, or None if it is valid.

    Args:
        ref: a reference.

    Returns:
        ``"is empty"``, ``"is too long (N characters, max 128)"``, ``"is not
        printable (...)"``, ``"has leading or trailing whitespace"``, or None.
    """
    if not ref:
        return "is empty"
    if len(ref) > MAX_REFERENCE_LENGTH:
        return f"is too long ({len(ref)} characters, max {MAX_REFERENCE_LENGTH})"
    if not ref.isprintable():
        bad = next(c for c in ref if not c.isprintable())
        return f"is not printable (it holds {bad!r})"
    if ref != ref.strip():
        return "has leading or trailing whitespace"
    return None


def validate_references(refs: Sequence[str], count: int, existing: Iterable[str] = ()) -> list[str]:
    """Check that there is one unique, printable reference per template.

    Args:
        refs: the references, one per template row (see :func:`reference_list`).
        count: number of template rows.
        existing: references already enrolled.

    Returns:
        The references as a new list.

    Raises:
        TemplateError: not a sequence of strings, count mismatch, an empty,
            over-long or unprintable reference or one with surrounding
            whitespace (``reference at index 6 ('DE 7 ') has leading or
            trailing whitespace``), a duplicate within ``refs`` or against
            ``existing``.
    """
    out = reference_list(refs)
    if len(out) != count:
        raise TemplateError(f"{count} templates but {len(out)} references")
    first: dict[str, int] = {}
    for i, r in enumerate(out):
        problem = reference_problem(r)
        if problem is not None:
            raise TemplateError(f"reference at index {i} ({shown_reference(r)}) {problem}")
        if r in first:
            raise TemplateError(f"reference {shown_reference(r)} appears twice (at index {first[r]} and {i})")
        first[r] = i
    enrolled = set(existing)
    for i, r in enumerate(out):
        if r in enrolled:
            raise TemplateError(f"reference {shown_reference(r)} is already enrolled (at index {i})")
    return out
