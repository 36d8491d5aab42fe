"""Validation of face templates and their reference strings.

Templates are L2-normalised float32 rows; the score between two templates is
their inner product (cosine similarity). Every check raises
:class:`~pprm.errors.TemplateError` with one line saying which row failed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from pprm.errors import TemplateError

__all__ = ["normalise_templates", "normalise_probe", "validate_references", "MAX_REFERENCE_LENGTH"]

# References are national record identifiers, not free text; 128 characters
# covers every format we know of and keeps indexes and tokens small.
MAX_REFERENCE_LENGTH = 128


def normalise_templates(templates: np.ndarray, dim: int) -> np.ndarray:
    """Check an N x dim array and return it L2-normalised as float32.

    Args:
        templates: array of shape ``(N, dim)``.
        dim: the gallery dimension.

    Returns:
        A new C-contiguous float32 array of unit rows.

    Raises:
        TemplateError: wrong shape or dimension, non-finite values, zero rows.
    """
    arr = np.asarray(templates)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise TemplateError(f"templates must have shape (N, {dim}), got {arr.shape}")
    if arr.shape[0] == 0:
        raise TemplateError("no templates given")
    if not np.issubdtype(arr.dtype, np.floating):
        raise TemplateError(f"templates must be floating point, got {arr.dtype}")
    arr64 = arr.astype(np.float64)
    bad = ~np.isfinite(arr64).all(axis=1)
    if bad.any():
        raise TemplateError(f"template row {int(np.argmax(bad))} has a non-finite value")
    norms = np.linalg.norm(arr64, axis=1)
    zero = norms < 1e-12
    if zero.any():
        raise TemplateError(f"template row {int(np.argmax(zero))} is a zero vector")
    return np.ascontiguousarray((arr64 / norms[:, None]).astype(np.float32))


def normalise_probe(probe: np.ndarray, dim: int) -> np.ndarray:
    """Check one probe template and return it L2-normalised as float32.

    Accepts shape ``(dim,)`` or ``(1, dim)``.

    Raises:
        TemplateError: as :func:`normalise_templates`.

    Warning:
        Probes are always normalised: an unnormalised or scaled probe would
        turn the threshold into an oracle on gallery coordinates.
    """
    arr = np.asarray(probe)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] != 1 or arr.shape[1] != dim:
        raise TemplateError(f"a probe must be one template of dimension {dim}, got shape {np.asarray(probe).shape}")
    return normalise_templates(arr, dim)[0]


def validate_references(refs: Sequence[str], count: int, existing: Iterable[str] = ()) -> list[str]:
    """Check that there is one unique, printable reference per template.

    Args:
        refs: the references, one per template row.
        count: number of template rows.
        existing: references already enrolled.

    Returns:
        The references as a list.

    Raises:
        TemplateError: count mismatch, empty or over-long reference, control
            characters, a duplicate within ``refs`` or against ``existing``.
    """
    out = [str(r) for r in refs]
    if len(out) != count:
        raise TemplateError(f"{count} templates but {len(out)} references")
    seen: set[str] = set()
    for i, r in enumerate(out):
        if not r or len(r) > MAX_REFERENCE_LENGTH or not r.isprintable() or r != r.strip():
            raise TemplateError(f"reference {i + 1} is empty, too long or not printable")
        if r in seen:
            raise TemplateError(f"reference {r!r} appears twice")
        seen.add(r)
    clash = seen.intersection(existing)
    if clash:
        raise TemplateError(f"reference {sorted(clash)[0]!r} is already enrolled")
    return out
