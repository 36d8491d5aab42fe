"""The requester's outbox: the queries a state sent, and what came back for each.

The outbox is the ``outbox`` table of the state's database
(``DIR/state.db``, 0600, :mod:`pprm.protocol.statedb`); each row holds one
record as the JSON object ``outbox.json`` used to map its query id to, with
the keys pprm has always written, so records of any version read unchanged
(an ``outbox.json`` left by an earlier pprm is imported on first use)::

    sealed: {"to", "case", "purpose", "created", "expires", "answer"[, "refused"]}
    blind:  the same, and "profile": "blind", "key_id", "candidates"
            [, "probe"][, "followups"][, "followups_refused"]

``answer`` is the id of the one reply accepted for the query (an answer or a
signed refusal), ``refused`` the refusal's reason code, ``candidates`` the
handles a blind answer decrypted to (kept, so opening the answer again gives
the same handles). A ``hits`` key that older blind records carry is ignored.

``probe`` is the blind query's probe, as the requester normalised it (base64
of float32 little-endian): a blind follow-up carries it, so that the
responder can check that the handle's record clears its threshold. It is
this state's own data on its own disk (``state.db`` is 0600, and written
with ``secure_delete``, so a dropped probe is overwritten), written only
when present and dropped once no follow-up can follow (no hit, a refusal,
an abandoned query); records written before pprm kept probes have none, and
a follow-up on them is refused locally
(:class:`~pprm.errors.ProbeNotKeptError`). ``followups`` lists the ids of
the follow-ups sent on the answer, ``followups_refused`` those the peer
refused with a signed refusal. The optional keys are written only when set,
so a record that never had them is written back key for key.

A record is pruned once no reply to its query or to its follow-ups can
verify any more (:func:`keep_until`).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from pprm.errors import StateError
from pprm.profile import Profile, is_profile
from pprm.protocol.envelope import CLOCK_SKEW, MAX_LIFETIME
from pprm.protocol.statedb import Legacy, StateDB, locate

__all__ = ["Outbox", "SentQuery", "SentSealedQuery", "SentBlindQuery", "sent_query_from_json", "keep_until",
           "REPLY_WINDOW", "FOLLOWUP_WINDOW"]


@dataclass(frozen=True, kw_only=True)
class SentQuery:
    """What both profiles' outbox records hold.

    Attributes:
        query_id: the query's id (the record's key).
        peer: the state the query was sent to (``"to"`` on disk).
        case: the case reference.
        purpose: the purpose of the search.
        created: when the query was made, seconds since the epoch.
        expires: when the query stops being valid.
        answer: the id of the reply accepted for it (answer or refusal), or None.
        refused: the refusal's reason code when the reply was a refusal.
    """

    profile: ClassVar[Profile]

    query_id: str
    peer: str
    case: str
    purpose: str
    created: int
    expires: int
    answer: str | None = None
    refused: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as the outbox keeps it (without its query id, which is the key).

        Returns:
            A JSON-ready dict.
        """
        out: dict[str, Any] = {"to": self.peer, "case": self.case, "purpose": self.purpose,
                               "created": self.created, "expires": self.expires, "answer": self.answer}
        if self.refused is not None:
            out["refused"] = self.refused
        return out


@dataclass(frozen=True, kw_only=True)
class SentSealedQuery(SentQuery):
    """A sealed-profile query this state sent."""

    profile: ClassVar[Profile] = "sealed"


@dataclass(frozen=True, kw_only=True)
class SentBlindQuery(SentQuery):
    """A blind-profile query this state sent.

    Attributes:
        key_id: the key pair the probe was encrypted under.
        candidates: the handles its answer decrypted to, once opened.
        probe: the probe as this state normalised it, float32 little-endian
            bytes (see :meth:`probe_template`), kept for the follow-ups; None
            when not kept (an older record, or dropped once no follow-up can
            follow). Not in the repr.
        followups: ids of the follow-ups sent on the answer.
        followups_refused: ids of those the peer refused (signed refusals).

    Warning:
        The probe is biometric data, kept here because a blind follow-up must
        carry it (the responder resolves a handle only if the probe clears
        its threshold against the record). It is the requesting state's own
        probe on its own disk, in the 0600 ``state.db``, and never leaves
        except boxed in a follow-up to the state whose answer named the handle.
    """

    profile: ClassVar[Profile] = "blind"

    key_id: str
    candidates: tuple[str, ...] | None = None
    probe: bytes | None = field(default=None, repr=False)
    followups: tuple[str, ...] = ()
    followups_refused: tuple[str, ...] = ()

    def probe_template(self) -> np.ndarray | None:
        """The kept probe as float32[dim], or None when it is not kept."""
        return None if self.probe is None else np.frombuffer(self.probe, dtype="<f4").astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        """As :meth:`SentQuery.to_json`, with the blind profile's keys (the optional ones only when set)."""
        out = super().to_json()
        out.update(profile="blind", key_id=self.key_id,
                   candidates=None if self.candidates is None else list(self.candidates))
        if self.probe is not None:
            out["probe"] = base64.b64encode(self.probe).decode("ascii")
        if self.followups:
            out["followups"] = list(self.followups)
        if self.followups_refused:
            out["followups_refused"] = list(self.followups_refused)
        return out


def _text(obj: Mapping[str, Any], key: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise TypeError(key)
    return value


def _optional_text(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise TypeError(key)
    return value


def _texts(obj: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = obj.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(key)
    return tuple(value)


def _probe(obj: Mapping[str, Any]) -> bytes | None:
    value = obj.get("probe")
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("probe")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise TypeError("probe") from None
    if not raw or len(raw) % 4:
        raise TypeError("probe")
    return raw


def _int(obj: Mapping[str, Any], key: str) -> int:
    value = obj[key]
    # Times, kept as SQLite integers (64 bits; the margin leaves room for keep_until).
    if type(value) is not int or not -(1 << 62) < value < 1 << 62:
        raise TypeError(key)
    return value


def sent_query_from_json(query_id: str, obj: object) -> SentSealedQuery | SentBlindQuery:
    """Read one outbox record, in the format of any pprm version so far.

    Args:
        query_id: the record's key.
        obj: the decoded JSON value.

    Returns:
        The typed record: a record without ``"profile"`` is sealed.

    Raises:
        StateError: the record is malformed.
    """
    try:
        if not isinstance(obj, dict):
            raise TypeError("record")
        profile = obj.get("profile", "sealed")
        if not is_profile(profile):
            raise TypeError("profile")
        common: dict[str, Any] = {
            "query_id": query_id, "peer": _text(obj, "to"), "case": _text(obj, "case"),
            "purpose": _text(obj, "purpose"), "created": _int(obj, "created"), "expires": _int(obj, "expires"),
            "answer": _optional_text(obj, "answer"), "refused": _optional_text(obj, "refused"),
        }
        if profile == "sealed":
            return SentSealedQuery(**common)
        candidates = obj.get("candidates")
        if candidates is not None and (not isinstance(candidates, list)
                                       or not all(isinstance(c, str) for c in candidates)):
            raise TypeError("candidates")
        return SentBlindQuery(**common, key_id=_text(obj, "key_id"),
                              candidates=None if candidates is None else tuple(candidates),
                              probe=_probe(obj), followups=_texts(obj, "followups"),
                              followups_refused=_texts(obj, "followups_refused"))
    except (KeyError, TypeError):
        raise StateError("outbox record is corrupt") from None


# A reply to a query (answer or refusal) is made by a peer that verified the
# query, so its ``created`` is at most the query's expiry plus CLOCK_SKEW, and
# it verifies here up to its own expiry plus CLOCK_SKEW, at most MAX_LIFETIME
# after its creation (open_envelope). The window is the protocol's bound, not
# a ``token_ttl``: the answering state's token_ttl, not this state's, sets its
# answer's lifetime. After it no reply can be opened, and no follow-up made
# (a follow-up needs its answer to verify).
REPLY_WINDOW = 2 * CLOCK_SKEW + MAX_LIFETIME
# A blind record that lists follow-ups must also take their refusals: each
# follow-up was made inside REPLY_WINDOW, lives at most MAX_LIFETIME (else the
# peer refuses it unread), and its refusal is made and verifies as above.
FOLLOWUP_WINDOW = 2 * CLOCK_SKEW + 2 * MAX_LIFETIME


def keep_until(record: SentQuery) -> int:
    """The last second at which an outbox record can still matter.

    Args:
        record: the record.

    Returns:
        ``expires + REPLY_WINDOW`` (about 31 days after the query expires),
        plus :data:`FOLLOWUP_WINDOW` when the record lists follow-ups
        (about 93 days in all). Afterwards no reply to the query or to its
        follow-ups verifies, so none can be opened, and nothing can be
        followed up.
    """
    extra = FOLLOWUP_WINDOW if isinstance(record, SentBlindQuery) and record.followups else 0
    return record.expires + REPLY_WINDOW + extra


class Outbox:
    """The queries one state sent; callers hold the state lock around read-modify-write.

    The records are the ``outbox`` table of the state's database
    (:mod:`pprm.protocol.statedb`, ``DIR/state.db``, 0600), each the JSON
    object ``outbox.json`` held for it (the keys above). A record is deleted
    once it can no longer matter (:func:`keep_until`); pruning runs with every
    :meth:`put`. An ``outbox.json`` left by an earlier pprm is imported on
    first use and deleted.

    Args:
        path: the outbox's former JSON file (``DIR/outbox.json``): the
            records live in ``DIR/state.db`` under the file's name without
            ``.json``.

    Warning:
        Pruning forgets a query some 31 days after it expired (93 days when
        it was followed up). A reply made as pprm makes it (dated when it
        verified the message it replies to) fails its own expiry check by
        then. A reply that still verifies later (a peer that post-dates its
        replies) is refused as "for a query this state did not send", as is a
        second answer to a pruned query, rather than as a replay: refused
        either way. The audit log keeps every query and answer.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        directory, self.name = locate(path)
        self._db = StateDB(directory)
        self._legacy = Legacy(path, self.name, self._parse, self._load)

    def __repr__(self) -> str:
        return f"Outbox({self.path!r})"

    # -- the former JSON file ------------------------------------------------------------
    def _parse(self, raw: bytes) -> list[SentSealedQuery | SentBlindQuery]:
        try:
            data = json.loads(raw)
        except ValueError:
            raise StateError(f"{os.path.basename(self.path)} is corrupt") from None
        if not isinstance(data, dict):
            raise StateError(f"{os.path.basename(self.path)} is corrupt")
        try:
            return [sent_query_from_json(str(qid), rec) for qid, rec in data.items()]
        except StateError:
            raise StateError(f"{os.path.basename(self.path)} is corrupt") from None

    def _load(self, conn: sqlite3.Connection, records: Iterable[SentQuery]) -> int:
        count = 0

        def rows() -> Iterator[tuple[str, str, int, str]]:
            nonlocal count
            for r in records:  # streamed: a bulk load need not fit in memory twice
                count += 1
                yield self.name, r.query_id, keep_until(r), _dumps(r.to_json())

        conn.executemany("INSERT INTO outbox (box, query_id, keep_until, record) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT (box, query_id) DO UPDATE SET keep_until = excluded.keep_until, "
                         "record = excluded.record", rows())
        return count

    def _record(self, query_id: str, text: str) -> SentSealedQuery | SentBlindQuery:
        try:
            return sent_query_from_json(query_id, json.loads(text))
        except (ValueError, StateError):
            raise StateError(f"outbox record {query_id[:16]} in {self._db.path} is corrupt") from None

    # -- reading -------------------------------------------------------------------------
    def load(self) -> dict[str, SentSealedQuery | SentBlindQuery]:
        """Every record kept, by query id (empty when nothing was sent yet); O(records).

        Returns:
            Query id -> record, in query id order.

        Raises:
            StateError: the database (or a legacy ``outbox.json``) is corrupt.
        """
        with self._db.read(self._legacy) as conn:
            if conn is None:
                return {}
            rows = conn.execute("SELECT query_id, record FROM outbox WHERE box = ? ORDER BY query_id",
                                (self.name,)).fetchall()
        return {qid: self._record(qid, text) for qid, text in rows}

    def get(self, query_id: str) -> SentSealedQuery | SentBlindQuery | None:
        """One record, or None.

        Args:
            query_id: the query's id.

        Returns:
            The record, or None if this state never sent that query (or it
            was pruned, see :func:`keep_until`).

        Raises:
            StateError: the database (or a legacy ``outbox.json``) is corrupt.
        """
        with self._db.read(self._legacy) as conn:
            if conn is None:
                return None
            row = conn.execute("SELECT record FROM outbox WHERE box = ? AND query_id = ?",
                               (self.name, query_id)).fetchone()
        return None if row is None else self._record(query_id, row[0])

    # -- writing -------------------------------------------------------------------------
    def put(self, record: SentQuery) -> None:
        """Add or replace one record, and prune, in one durable transaction.

        Pruning runs at the earlier of the clock and the record's creation
        time, so a record made with a clock override (tests) does not
        prune the others.

        Args:
            record: the record; its query id is the key.

        Raises:
            StateError: the database (or a legacy ``outbox.json``) is corrupt.
        """
        with self._db.write(self._legacy) as conn:
            self._load(conn, [record])
            self._prune(conn, min(time.time(), record.created))

    def put_many(self, records: Iterable[SentQuery]) -> int:
        """Add or replace records in bulk, in one transaction; nothing is pruned.

        Args:
            records: the records.

        Returns:
            How many were written.

        Raises:
            StateError: the database (or a legacy ``outbox.json``) is corrupt.
        """
        with self._db.write(self._legacy) as conn:
            return self._load(conn, records)

    def prune(self, now: float) -> int:
        """Delete the records that can no longer matter at ``now`` (:func:`keep_until`).

        Args:
            now: the time, seconds since the epoch.

        Returns:
            How many records were deleted.

        Raises:
            StateError: the database is corrupt or unwritable.
        """
        if not self._db.exists() and not os.path.exists(self.path):
            return 0
        with self._db.write(self._legacy) as conn:
            return self._prune(conn, now)

    def _prune(self, conn: sqlite3.Connection, now: float) -> int:
        return conn.execute("DELETE FROM outbox WHERE box = ? AND keep_until < ?", (self.name, now)).rowcount


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
