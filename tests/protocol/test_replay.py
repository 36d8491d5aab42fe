"""The seen-message cache: once per sender and id, persistent, and bounded (rows of DIR/state.db)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pprm.errors import ReplayError, StateError
from pprm.protocol.envelope import CLOCK_SKEW
from pprm.protocol.replay import ReplayCache

T = 1_700_000_000
ID1 = "11" * 16
ID2 = "22" * 16


def _path(tmp_path: Path) -> str:
    return str(tmp_path / "replay.json")


def test_check_then_add(tmp_path: Path) -> None:
    rc = ReplayCache(_path(tmp_path))
    rc.check("DE", ID1)  # unseen: no error, nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    rc.add("DE", ID1, T + 3600, T)
    with pytest.raises(ReplayError):
        rc.check("DE", ID1)
    with pytest.raises(ReplayError):
        rc.add("DE", ID1, T + 3600, T)


def test_ids_are_per_sender(tmp_path: Path) -> None:
    rc = ReplayCache(_path(tmp_path))
    rc.add("DE", ID1, T + 3600, T)
    rc.check("FR", ID1)
    rc.add("FR", ID1, T + 3600, T)
    rc.check("DE", ID2)
    with pytest.raises(ReplayError):
        rc.check("FR", ID1)


def test_persists_across_instances(tmp_path: Path) -> None:
    ReplayCache(_path(tmp_path)).add("DE", ID1, T + 3600, T)
    again = ReplayCache(_path(tmp_path))
    with pytest.raises(ReplayError):
        again.check("DE", ID1)
    with pytest.raises(ReplayError):
        again.add("DE", ID1, T + 3600, T + 10)


def test_rejected_add_changes_nothing(tmp_path: Path) -> None:
    rc = ReplayCache(_path(tmp_path))
    rc.add("DE", ID1, T + 3600, T)
    before = (tmp_path / "state.db").read_bytes()
    with pytest.raises(ReplayError):
        rc.add("DE", ID1, T + 7200, T + 5000)
    assert (tmp_path / "state.db").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.db"]


def test_expired_entries_are_pruned(tmp_path: Path) -> None:
    rc = ReplayCache(_path(tmp_path))
    rc.add("DE", ID1, T + 100, T)
    rc.add("FR", ID2, T + 100 + CLOCK_SKEW + 50, T)
    # At this time ID1 expired more than CLOCK_SKEW ago: the envelope's expiry
    # check refuses it anyway, so the cache may forget it.
    later = T + 100 + CLOCK_SKEW + 1
    rc.add("NL", ID1, later + 3600, later)
    assert rc.entries() == {"FR": {ID2: T + 100 + CLOCK_SKEW + 50}, "NL": {ID1: later + 3600}}
    rc.check("DE", ID1)  # forgotten
    with pytest.raises(ReplayError):
        rc.check("FR", ID2)


def test_entry_is_kept_up_to_the_skew_boundary(tmp_path: Path) -> None:
    rc = ReplayCache(_path(tmp_path))
    rc.add("DE", ID1, T + 100, T)
    rc.add("DE", ID2, T + 9999, T + 100 + CLOCK_SKEW)  # ID1's expiry == horizon: still kept
    with pytest.raises(ReplayError):
        rc.check("DE", ID1)


def test_cache_stays_bounded(tmp_path: Path) -> None:
    rc = ReplayCache(_path(tmp_path))
    for i in range(50):
        rc.add("DE", f"{i:032x}", T + i * 10 + 10, T + i * 10)
    data = rc.entries()
    # Only ids whose expiry is within CLOCK_SKEW of the last "now" survive.
    last_now = T + 49 * 10
    assert set(data["DE"]) == {f"{i:032x}" for i in range(50) if T + i * 10 + 10 >= last_now - CLOCK_SKEW}
    assert len(data["DE"]) < 50


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"DE": 5}', '{"DE": {"x": "y"}}',
                                     '{"DE": {"x": 100000000000000000000}}'])
def test_a_corrupt_legacy_cache_is_a_state_error_and_is_left_alone(tmp_path: Path, content: str) -> None:
    (tmp_path / "replay.json").write_text(content)
    rc = ReplayCache(_path(tmp_path))
    with pytest.raises(StateError, match=r"replay\.json \(replay cache\) is corrupt"):
        rc.check("DE", ID1)
    with pytest.raises(StateError):
        rc.add("DE", ID1, T + 1, T)
    # Nothing imported, nothing created: the file waits for its owner to repair it.
    assert (tmp_path / "replay.json").read_text() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["replay.json"]


def test_a_legacy_cache_is_imported_once_and_deleted(tmp_path: Path) -> None:
    (tmp_path / "replay.json").write_text(f'{{"DE": {{"{ID1}": {T + 3600}}}, "FR": {{"{ID2}": {T + 60}}}}}')
    rc = ReplayCache(_path(tmp_path))
    with pytest.raises(ReplayError):
        rc.check("DE", ID1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.db"]
    assert rc.entries() == {"DE": {ID1: T + 3600}, "FR": {ID2: T + 60}}
    with pytest.raises(ReplayError):
        ReplayCache(_path(tmp_path)).add("FR", ID2, T + 60, T)


def test_two_caches_in_one_directory_stay_separate(tmp_path: Path) -> None:
    # A key service keeps the state's cache (replay.json) and its front's frames (channel.json).
    replay, channel = ReplayCache(str(tmp_path / "replay.json")), ReplayCache(str(tmp_path / "channel.json"))
    replay.add("DE", ID1, T + 3600, T)
    channel.check("DE", ID1)
    channel.add("front", ID2, T + 10, T)
    channel.add("DE", ID1, T + 20, T)
    replay.check("front", ID2)
    # Pruning one cache leaves the other alone.
    late = T + 3600 + CLOCK_SKEW + 1
    channel.add("front", "33" * 16, late + 10, late)
    assert channel.entries() == {"front": {"33" * 16: late + 10}}
    assert replay.entries() == {"DE": {ID1: T + 3600}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.db"]


def test_merge_is_a_union_keeping_the_later_expiry(tmp_path: Path) -> None:
    rc = ReplayCache(_path(tmp_path))
    rc.add("DE", ID1, T + 100, T)
    assert rc.merge({"DE": {ID1: T + 50, ID2: T + 60}, "FR": {ID1: T + 70}}) == 3
    assert rc.entries() == {"DE": {ID1: T + 100, ID2: T + 60}, "FR": {ID1: T + 70}}
    other = ReplayCache(str(tmp_path / "other" / "replay.json"))
    (tmp_path / "other").mkdir()
    other.merge(rc.entries())
    assert other.entries() == rc.entries()
