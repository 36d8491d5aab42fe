"""The state database (DIR/state.db): one file, 0600, WAL, durable commits, typed errors, shared by processes."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from pprm.errors import ReplayError, StateError
from pprm.protocol import statedb
from pprm.protocol.replay import ReplayCache
from pprm.protocol.statedb import StateDB, locate

T = 1_700_000_000


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_a_store_path_maps_to_the_directory_database_and_a_name(tmp_path: Path) -> None:
    assert locate(str(tmp_path / "replay.json")) == (str(tmp_path), "replay")
    assert locate(str(tmp_path / "channel.json")) == (str(tmp_path), "channel")
    assert locate(str(tmp_path / "quota")) == (str(tmp_path), "quota")
    with pytest.raises(StateError):
        locate(str(tmp_path / ".json"))


def test_the_database_is_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        ReplayCache(str(tmp_path / "replay.json")).add("DE", "11" * 16, T + 10, T)
        db = StateDB(str(tmp_path))
        with db.read() as conn:
            assert conn is not None
            # While a connection is open, its log and index exist, with the database's mode.
            assert _files(tmp_path) == ["state.db", "state.db-shm", "state.db-wal"]
            for name in _files(tmp_path):
                assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600, name
    finally:
        os.umask(old)
    # Between operations the directory holds the one file: the last connection checkpointed it.
    assert _files(tmp_path) == ["state.db"]


def test_every_connection_is_wal_with_full_sync_and_secure_delete(tmp_path: Path) -> None:
    db = StateDB(str(tmp_path))
    with db.write() as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == int(statedb.BUSY_TIMEOUT * 1000)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == statedb.SCHEMA_VERSION


def test_reading_creates_nothing_and_changes_nothing(tmp_path: Path) -> None:
    rc = ReplayCache(str(tmp_path / "replay.json"))
    rc.check("DE", "11" * 16)
    assert rc.entries() == {}
    assert _files(tmp_path) == []
    rc.add("DE", "11" * 16, T + 10, T)
    before = (tmp_path / "state.db").read_bytes()
    rc.check("DE", "22" * 16)
    assert rc.entries() == {"DE": {"11" * 16: T + 10}}
    assert (tmp_path / "state.db").read_bytes() == before
    assert _files(tmp_path) == ["state.db"]


@pytest.mark.parametrize("content", [b"this is not a database\n" * 100, b"SQLite format 3\x00" + b"\xff" * 4000])
def test_a_corrupt_database_is_a_state_error_in_one_line(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "state.db").write_bytes(content)
    rc = ReplayCache(str(tmp_path / "replay.json"))
    for call in (lambda: rc.check("DE", "11" * 16), lambda: rc.add("DE", "11" * 16, T + 10, T)):
        with pytest.raises(StateError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and str(tmp_path / "state.db") in message and "corrupt" in message
    assert (tmp_path / "state.db").read_bytes() == content


def test_a_database_from_a_newer_pprm_is_refused(tmp_path: Path) -> None:
    ReplayCache(str(tmp_path / "replay.json")).add("DE", "11" * 16, T + 10, T)
    conn = sqlite3.connect(tmp_path / "state.db")
    conn.execute(f"PRAGMA user_version = {statedb.SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="newer pprm"):
        ReplayCache(str(tmp_path / "replay.json")).check("DE", "11" * 16)


def test_a_writer_that_waits_too_long_gets_a_state_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rc = ReplayCache(str(tmp_path / "replay.json"))
    rc.add("DE", "11" * 16, T + 10, T)
    monkeypatch.setattr(statedb, "BUSY_TIMEOUT", 0.2)
    with StateDB(str(tmp_path)).write():
        # Readers are not blocked by the writer (WAL); another writer waits, then gives up.
        with pytest.raises(ReplayError):
            rc.check("DE", "11" * 16)
        with pytest.raises(StateError, match="busy"):
            rc.add("DE", "22" * 16, T + 10, T)
    rc.add("DE", "22" * 16, T + 10, T)


def test_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    db = StateDB(str(tmp_path))
    rc = ReplayCache(str(tmp_path / "replay.json"))
    rc.add("DE", "11" * 16, T + 10, T)
    with pytest.raises(RuntimeError), db.write() as conn:
        conn.execute("INSERT INTO replay VALUES ('replay', 'DE', ?, ?)", ("22" * 16, T + 10))
        raise RuntimeError("interrupted")
    assert rc.entries() == {"DE": {"11" * 16: T + 10}}


# -- several processes -----------------------------------------------------------------------

def _add_ids(directory: str, sender: str, ids: list[str], out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    rc = ReplayCache(os.path.join(directory, "replay.json"))
    accepted = 0
    for msg_id in ids:
        try:
            rc.add(sender, msg_id, T + 3600, T)
            accepted += 1
        except ReplayError:
            pass
    out.put(accepted)


def _run(directory: Path, jobs: list[tuple[str, list[str]]]) -> list[int]:
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_add_ids, args=(str(directory), sender, ids, out)) for sender, ids in jobs]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


def test_concurrent_writers_lose_no_entry(tmp_path: Path) -> None:
    # No state lock here: the database's own write lock (and busy timeout) serialises them.
    ids = [f"{i:032x}" for i in range(150)]
    assert _run(tmp_path, [("DE", ids), ("FR", ids)]) == [150, 150]
    entries = ReplayCache(str(tmp_path / "replay.json")).entries()
    assert set(entries["DE"]) == set(entries["FR"]) == set(ids)


def test_concurrent_writers_of_the_same_ids_accept_each_once(tmp_path: Path) -> None:
    ids = [f"{i:032x}" for i in range(150)]
    assert sum(_run(tmp_path, [("DE", ids), ("DE", ids[::-1])])) == 150
    assert set(ReplayCache(str(tmp_path / "replay.json")).entries()["DE"]) == set(ids)
