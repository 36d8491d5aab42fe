"""Template and reference validation: every bad input is a one-line TemplateError."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pprm.errors import TemplateError
from pprm.matching.templates import (
    MAX_REFERENCE_LENGTH,
    check_rows,
    normalise_probe,
    normalise_templates,
    reference_list,
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


def _bad_arrays() -> list[np.ndarray]:
    nan, zero = np.ones((3, DIM), np.float32), np.ones((3, DIM), np.float32)
    nan[2, 0] = np.nan
    zero[1] = 0.0
    return [np.ones((3, DIM + 1), np.float32), np.ones((0, DIM), np.float32), np.ones((2, DIM), np.int64), nan, zero]


def test_templates_and_probes_are_checked_alike_rows_from_zero() -> None:
    # One checker (check_rows) for gallery templates and batches of probes: the messages differ by the noun only.
    from pprm.node.requester import _check_probes

    for arr in _bad_arrays():
        with pytest.raises(TemplateError) as as_templates:
            normalise_templates(arr, DIM)
        with pytest.raises(TemplateError) as as_probes:
            _check_probes(arr, DIM)
        with pytest.raises(TemplateError) as direct:
            check_rows(arr, DIM, noun="probe")
        assert str(as_probes.value) == str(direct.value)
        assert str(as_probes.value).replace("probe", "template") == str(as_templates.value)
    msgs = []
    for arr in _bad_arrays()[3:]:
        with pytest.raises(TemplateError) as info:
            _check_probes(arr, DIM)
        msgs.append(str(info.value))
    assert msgs == ["probe row 2 has a non-finite value", "probe row 1 is a zero vector"]


def test_check_rows_returns_the_rows_and_their_norms() -> None:
    x = np.arange(1, 2 * DIM + 1, dtype=np.float32).reshape(2, DIM)
    rows, norms = check_rows(x, DIM, noun="template")
    assert rows.dtype == np.float64 and np.array_equal(rows, x.astype(np.float64))
    assert np.allclose(norms, np.linalg.norm(x.astype(np.float64), axis=1))


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
    (["a", ""], 2, r"^reference at index 1 \(''\) is empty$"),
    (["x" * (MAX_REFERENCE_LENGTH + 1)], 1,
     rf"^reference at index 0 \('x{{40}}'\.\.\.\) is too long \(129 characters, max {MAX_REFERENCE_LENGTH}\)$"),
    (["ok", "line\nbreak"], 2, r"^reference at index 1 \('line\\nbreak'\) is not printable \(it holds '\\n'\)$"),
    (["tab\there"], 1, r"index 0 .*is not printable \(it holds '\\t'\)"),
    (["nul\x00"], 1, "not printable"),
    (["\u202eRLO"], 1, r"not printable \(it holds '\\u202e'\)"),
    ([" padded"], 1, r"^reference at index 0 \(' padded'\) has leading or trailing whitespace$"),
    (["padded "], 1, "has leading or trailing whitespace"),
    (["a", "b", "a"], 3, r"^reference 'a' appears twice \(at index 0 and 2\)$"),
])
def test_bad_references_say_which_index_and_what_is_wrong(refs: list[str], count: int, match: str) -> None:
    _raises(validate_references, refs, count, match=match)


def test_duplicates_against_existing() -> None:
    _raises(validate_references, ["new", "DE-7"], 2, ["DE-1", "DE-7"],
            match=r"^reference 'DE-7' is already enrolled \(at index 1\)$")


def test_a_long_bad_reference_is_shown_cut() -> None:
    ref = "A" * 100 + "\n"
    with pytest.raises(TemplateError) as info:
        validate_references([ref], 1)
    msg = str(info.value)
    assert "A" * 40 + "'..." in msg and "A" * 41 not in msg


@pytest.mark.parametrize(("refs", "match"), [
    ([b"x", "y"], r"^reference at index 0 is bytes, not str$"),
    (["x", None], r"^reference at index 1 is NoneType, not str$"),
    (["x", "y", 3], r"^reference at index 2 is int, not str$"),
    (np.array(["x", None], dtype=object), r"^reference at index 1 is NoneType, not str$"),
])
def test_non_string_references_are_refused_not_converted(refs: object, match: str) -> None:
    _raises(validate_references, refs, len(refs), match=match)  # type: ignore[arg-type]


@given(st.lists(st.one_of(st.text(min_size=1, max_size=8), st.binary(max_size=8), st.none(), st.integers(),
                          st.floats(allow_nan=False)), min_size=1, max_size=6)
       .filter(lambda refs: not all(isinstance(r, str) for r in refs)))
def test_any_non_string_reference_is_refused_by_its_index(refs: list[object]) -> None:
    first = next(i for i, r in enumerate(refs) if not isinstance(r, str))
    with pytest.raises(TemplateError, match=rf"^reference at index {first} is {type(refs[first]).__name__}, not str$"):
        reference_list(refs)


def _generator() -> Iterator[str]:
    yield "a"
    yield "b"


@pytest.mark.parametrize(("refs", "match"), [
    (_generator(), "references must be a list of strings, got generator"),
    (iter(["a", "b"]), "references must be a list of strings, got list_iterator"),
    ({"a", "b"}, "references must be a list of strings, got set"),
    ({"a": 1, "b": 2}, "references must be a list of strings, got dict"),
    ("ab", "references must be a list of strings, got one str"),
    (b"ab", "references must be a list of strings, got one bytes"),
    (None, "references must be a list of strings, got NoneType"),
    (np.array([["a", "b"]]), r"references must be a list of strings, got an array of shape \(1, 2\)"),
])
def test_references_must_be_a_sequence(refs: object, match: str) -> None:
    _raises(validate_references, refs, 2, match=match)


def test_sequences_of_strings_pass_as_plain_strings() -> None:
    for refs in (["a", "b"], ("a", "b"), np.array(["a", "b"])):
        out = reference_list(refs)
        assert out == ["a", "b"] and all(type(r) is str for r in out)


def test_messages_never_echo_templates() -> None:
    x = np.full((2, DIM), 0.123456789, dtype=np.float32)
    x[1, 3] = np.nan
    with pytest.raises(TemplateError) as info:
        normalise_templates(x, DIM)
    assert "0.123" not in str(info.value)
