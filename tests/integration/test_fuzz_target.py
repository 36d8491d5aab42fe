"""The fuzz target stays runnable and clean without atheris: Hypothesis drives the same function."""

from __future__ import annotations

import importlib.util
import os
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "fuzz", "fuzz_inputs.py")
_spec = importlib.util.spec_from_file_location("fuzz_inputs", _PATH)
assert _spec is not None and _spec.loader is not None
fuzz_inputs = importlib.util.module_from_spec(_spec)
sys.modules["fuzz_inputs"] = fuzz_inputs
_spec.loader.exec_module(fuzz_inputs)


def test_seeds_parse_without_untyped_errors() -> None:
    for seed in fuzz_inputs.seeds():
        fuzz_inputs.one_input(seed)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(fuzz_inputs.PARSERS) - 1), st.binary(max_size=600))
def test_any_input_to_any_parser_fails_only_with_typed_errors(selector: int, data: bytes) -> None:
    fuzz_inputs.one_input(bytes([selector]) + data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_seeds_fail_only_with_typed_errors(data: st.DataObject) -> None:
    seed = bytearray(data.draw(st.sampled_from(fuzz_inputs.seeds())))
    for _ in range(data.draw(st.integers(1, 4))):
        if len(seed) > 1:
            seed[data.draw(st.integers(1, len(seed) - 1))] = data.draw(st.integers(0, 255))
    fuzz_inputs.one_input(bytes(seed))
