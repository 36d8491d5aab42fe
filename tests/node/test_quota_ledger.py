"""The quota ledger in DIR/state.db: the rolling window, and the import of a quota.json an earlier pprm left.

The import must neither lose nor count twice a row whatever moment a crash
hits: quota rows have no natural key, so a second import would double them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pprm.errors import StateError
from pprm.node.config import QUOTA_WINDOW
from pprm.node.policy import QuotaLedger
from pprm.protocol.statedb import StateDB

T = 1_800_000_000


def _ledger(directory: Path) -> QuotaLedger:
    return QuotaLedger(str(directory / "quota.json"))


def _legacy(directory: Path, rows: int) -> dict[str, list[list[object]]]:
    data: dict[str, list[list[object]]] = {"AA": [], "BB": []}
    for i in range(rows):
        data["AA" if i % 3 else "BB"].append([T + i, f"C-{i % 7}"])
    (directory / "quota.json").write_text(json.dumps(data))
    return data


def _count(directory: Path) -> int:
    return sum(len(v) for v in _ledger(directory).entries().values())


def test_usage_counts_the_window_and_record_prunes_it(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    assert ledger.usage("AA", "C-1", T) == (0, 0)
    assert os.listdir(tmp_path) == []  # reading creates nothing
    ledger.record("AA", "C-1", T)
    ledger.record("AA", "C-2", T + 10)
    ledger.record("AA", "C-1", T + 10)  # the same second, the same case: two rows
    ledger.record("BB", "C-1", T + 20)
    assert ledger.usage("AA", "C-1", T + 20) == (2, 3)
    assert ledger.usage("AA", "C-1", T + QUOTA_WINDOW) == (1, 2)  # the first has left the window
    ledger.record("BB", "C-9", T + QUOTA_WINDOW + 5)
    assert ledger.entries() == {"AA": [(T + 10, "C-2"), (T + 10, "C-1")],
                                "BB": [(T + 20, "C-1"), (T + QUOTA_WINDOW + 5, "C-9")]}
    assert stat.S_IMODE(os.stat(tmp_path / "state.db").st_mode) == 0o600


def test_merge_copies_a_ledger(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    ledger.record("AA", "C-1", T)
    (tmp_path / "KEYDIR").mkdir()
    copy = _ledger(tmp_path / "KEYDIR")
    assert copy.merge(ledger.entries()) == 1
    assert copy.usage("AA", "C-1", T + 1) == (1, 1)


def test_a_legacy_file_is_imported_once_and_deleted(tmp_path: Path) -> None:
    data = _legacy(tmp_path, 30)
    ledger = _ledger(tmp_path)
    assert ledger.usage("AA", "C-1", T + 30) == (sum(1 for w, c in data["AA"] if c == "C-1"), len(data["AA"]))
    assert sorted(os.listdir(tmp_path)) == ["state.db"]
    assert _count(tmp_path) == 30
    # The same content appearing again (a backup restored by hand) is recognised, not counted twice.
    _legacy(tmp_path, 30)
    assert _count(tmp_path) == 30
    assert sorted(os.listdir(tmp_path)) == ["state.db"]


@pytest.mark.parametrize("content", ["{", "[]", '{"AA": [[1.5, "C"]]}', '{"AA": [[1, 2]]}', '{"AA": [1]}'])
def test_a_corrupt_legacy_file_is_a_state_error_and_is_left_alone(tmp_path: Path, content: str) -> None:
    (tmp_path / "quota.json").write_text(content)
    with pytest.raises(StateError, match=r"quota\.json is corrupt"):
        _ledger(tmp_path).usage("AA", "C", T)
    with pytest.raises(StateError, match=r"quota\.json is corrupt"):
        _ledger(tmp_path).record("AA", "C", T)
    assert sorted(os.listdir(tmp_path)) == ["quota.json"]
    assert (tmp_path / "quota.json").read_text() == content


def test_a_crash_during_the_import_imports_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _legacy(tmp_path, 40)
    ledger = _ledger(tmp_path)
    real = ledger._legacy.load

    def half_then_crash(conn: sqlite3.Connection, rows: dict[str, list[tuple[int, str]]]) -> int:
        real(conn, {"AA": rows["AA"][:5]})
        raise KeyboardInterrupt

    monkeypatch.setattr(ledger, "_legacy", dataclasses.replace(ledger._legacy, load=half_then_crash))
    with pytest.raises(KeyboardInterrupt):
        ledger.usage("AA", "C-1", T)
    assert (tmp_path / "quota.json").exists()
    monkeypatch.undo()
    assert _count(tmp_path) == 40


def test_a_crash_between_the_import_and_the_delete_counts_nothing_twice(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _legacy(tmp_path, 40)

    def crash(self: StateDB, path: str, digest: str) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(StateDB, "_drop_legacy", crash)
        with pytest.raises(KeyboardInterrupt):
            _ledger(tmp_path).record("AA", "C-1", T + 100)
    # Imported (the file is still there), and the record that was cut short did not happen.
    assert (tmp_path / "quota.json").exists()
    assert _count(tmp_path) == 40
    assert sorted(os.listdir(tmp_path)) == ["state.db"]
    _ledger(tmp_path).record("AA", "C-1", T + 100)
    assert _count(tmp_path) == 41


_CHILD = """
import sys, time
from pprm.node.policy import QuotaLedger
print("ready", flush=True)
start = time.perf_counter()
QuotaLedger(sys.argv[1]).usage("AA", "C-1", 0)
print(time.perf_counter() - start, flush=True)
"""


def _migrate_in_child(directory: Path, kill_after: float | None) -> float | None:
    """Import DIR/quota.json in a child process; SIGKILL it ``kill_after`` seconds into the import."""
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(directory / "quota.json")],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    if kill_after is None:
        took = float(proc.stdout.readline())
        assert proc.wait(timeout=60) == 0
        return took
    time.sleep(kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return None


def test_an_import_killed_at_any_moment_loses_and_doubles_nothing(tmp_path: Path) -> None:
    rows = 20000
    (tmp_path / "probe").mkdir()
    _legacy(tmp_path / "probe", rows)
    took = _migrate_in_child(tmp_path / "probe", None)
    assert took is not None and _count(tmp_path / "probe") == rows
    rng = random.Random(5)
    for run in range(8):
        d = tmp_path / f"run{run}"
        d.mkdir()
        _legacy(d, rows)
        _migrate_in_child(d, rng.uniform(0, took * 1.2))
        assert _count(d) == rows, run
        assert sorted(os.listdir(d)) == ["state.db"]
