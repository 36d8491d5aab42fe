"""Template and reference validation: every bad input is a one-line TemplateError."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pprm.errors import TemplateError
from pprm.matching.templates import (
    MAX_REFERENCE_LENGTH,
    normalise_probe,
    normalise_templates,
    validate_references,
)

DIM = 16


def _raises(fn: object, *args: object, match: str) -> None:
    with pytest.raises(TemplateError, match=match) as info:
        fn(*args)  # type: ignore[operator]
    msg = str(info.value)
    assert msg and "\n" not in msg, "messages are one line"


@given(arrays(np.float32, (5, DIM), elements=st.floats(-1e3, 1e3, width=32)).filter(
    lambda a: bool((np.linalg.norm(a.astype(np.float64), axis=1) > 1e-3).all())))
def test_output_is_unit_norm_float32_and_same_direction(arr: np.ndarray) -> None:
    out = normalise_templates(arr, DIM)
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.shape == arr.shape
    assert np.allclose(np.linalg.norm(out.astype(np.float64), axis=1), 1.0, atol=1e-6)
    a64 = arr.astype(np.float64)
    cos = (out.astype(np.float64) * a64).sum(axis=1) / np.linalg.norm(a64, axis=1)
    assert np.allclose(cos, 1.0, atol=1e-6)


def test_does_not_modify_the_input_and_accepts_float64() -> None:
    x = np.arange(1, 2 * DIM + 1, dtype=np.float64).reshape(2, DIM)
    before = x.copy()
    out = normalise_templates(x, DIM)
    assert np.array_equal(x, before)
    assert out.dtype == np.float32 and out is not x


@pytest.mark.parametrize("shape", [(DIM,), (3, DIM + 1), (3, DIM - 1), (2, 3, DIM), (0, DIM)])
def test_wrong_shapes(shape: tuple[int, ...]) -> None:
    _raises(normalise_templates, np.ones(shape, dtype=np.float32), DIM, match="shape|no templates")


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.bool_, np.complex64, object])
def test_non_float_dtypes(dtype: type) -> None:
    _raises(normalise_templates, np.ones((2, DIM), dtype=dtype), DIM, match="floating point")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_name_the_row(bad: float) -> None:
    x = np.ones((4, DIM), dtype=np.float32)
    x[2, 5] = bad
    _raises(normalise_templates, x, DIM, match="row 2 has a non-finite")


def test_zero_and_near_zero_rows_name_the_row() -> None:
    x = np.ones((3, DIM), dtype=np.float32)
    x[1] = 0.0
    _raises(normalise_templates, x, DIM, match="row 1 is a zero vector")
    x[1] = 1e-20
    _raises(normalise_templates, x, DIM, match="row 1 is a zero vector")


def test_huge_finite_rows_normalise_without_overflow() -> None:
    x = np.full((1, DIM), np.finfo(np.float32).max, dtype=np.float32)
    out = normalise_templates(x, DIM)
    assert np.allclose(out, 1 / np.sqrt(DIM))


def test_probe_shapes() -> None:
    p = np.arange(1, DIM + 1, dtype=np.float32)
    one = normalise_probe(p, DIM)
    assert one.shape == (DIM,) and one.dtype == np.float32
    assert np.array_equal(normalise_probe(p[None, :], DIM), one)
    assert abs(float(np.linalg.norm(one.astype(np.float64))) - 1.0) < 1e-6
    _raises(normalise_probe, np.ones((2, DIM), dtype=np.float32), DIM, match="one template")
    _raises(normalise_probe, np.ones((1, 1, DIM), dtype=np.float32), DIM, match="one template")
    _raises(normalise_probe, np.ones(DIM + 1, dtype=np.float32), DIM, match="shape")
    _raises(normalise_probe, np.zeros(DIM, dtype=np.float32), DIM, match="zero vector")
    _raises(normalise_probe, np.full(DIM, np.nan, dtype=np.float32), DIM, match="non-finite")
    _raises(normalise_probe, np.ones(DIM, dtype=np.int64), DIM, match="floating point")


def test_scaled_probes_normalise_to_the_same_vector() -> None:
    # A probe cannot carry a scale factor into the matcher (docs/DESIGN.md section 4, trap 3).
    p = np.random.default_rng(0).standard_normal(DIM).astype(np.float32)
    assert np.allclose(normalise_probe(p * 1000, DIM), normalise_probe(p, DIM), atol=1e-7)


# -- references ---------------------------------------------------------------

def test_valid_references_pass_through() -> None:
    refs = ["DE-0001", "ÄÖÜ-ß 42", "x" * MAX_REFERENCE_LENGTH]
    assert validate_references(refs, 3, existing=["DE-0002"]) == refs
    assert validate_references(("a", "b"), 2) == ["a", "b"]


@pytest.mark.parametrize(("refs", "count", "match"), [
    (["a", "b"], 3, "3 templates but 2 references"),
    (["a", ""], 2, "reference 2 is empty"),
    (["x" * (MAX_REFERENCE_LENGTH + 1)], 1, "reference 1 .*too long"),
    (["ok", "line\nbreak"], 2, "reference 2 .*not printable"),
    (["tab\there"], 1, "not printable"),
    (["nul\x00"], 1, "not printable"),
    (["\u202eRLO"], 1, "not printable"),
    ([" padded"], 1, "not printable"),
    (["padded "], 1, "not printable"),
    (["a", "b", "a"], 3, "'a' appears twice"),
])
def test_bad_references(refs: list[str], count: int, match: str) -> None:
    _raises(validate_references, refs, count, match=match)


def test_duplicates_against_existing() -> None:
    _raises(validate_references, ["new", "DE-7"], 2, ["DE-1", "DE-7"], match="'DE-7' is already enrolled")


def test_messages_never_echo_templates() -> None:
    x = np.full((2, DIM), 0.123456789, dtype=np.float32)
    x[1, 3] = np.nan
    with pytest.raises(TemplateError) as info:
        normalise_templates(x, DIM)
    assert "0.123" not in str(info.value)
