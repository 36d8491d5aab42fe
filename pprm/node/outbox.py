"""The requester's outbox: the queries a state sent, and what came back for each.

``DIR/outbox.json`` maps each query id to one record. The JSON keys are the
ones pprm has always written, so existing state directories open unchanged::

    sealed: {"to", "case", "purpose", "created", "expires", "answer"[, "refused"]}
    blind:  the same, and "profile": "blind", "key_id", "candidates"

``answer`` is the id of the one reply accepted for the query (an answer or a
signed refusal), ``refused`` the refusal's reason code, ``candidates`` the
handles a blind answer decrypted to (kept, so opening the answer again gives
the same handles). A ``hits`` key that older blind records carry is ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pprm._fs import atomic_write_json, read_json
from pprm.errors import StateError
from pprm.profile import Profile, is_profile

__all__ = ["Outbox", "SentQuery", "SentSealedQuery", "SentBlindQuery", "sent_query_from_json"]


@dataclass(frozen=True, kw_only=True)
class SentQuery:
    """What both profiles' outbox records hold.

    Attributes:
        query_id: the query's id (the record's key in ``outbox.json``).
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
        """The record as ``outbox.json`` keeps it (without its query id, which is the key).

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
    """

    profile: ClassVar[Profile] = "blind"

    key_id: str
    candidates: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """As :meth:`SentQuery.to_json`, with the blind profile's keys."""
        out = super().to_json()
        out.update(profile="blind", key_id=self.key_id,
                   candidates=None if self.candidates is None else list(self.candidates))
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


def _int(obj: Mapping[str, Any], key: str) -> int:
    value = obj[key]
    if type(value) is not int:
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
                              candidates=None if candidates is None else tuple(candidates))
    except (KeyError, TypeError):
        raise StateError("outbox.json is corrupt") from None


class Outbox:
    """``outbox.json`` of one state; callers hold the state lock around read-modify-write.

    Args:
        path: the file (need not exist yet).
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"Outbox({self.path!r})"

    def load(self) -> dict[str, SentSealedQuery | SentBlindQuery]:
        """Every record, by query id (empty when nothing was sent yet).

        Returns:
            Query id -> record.

        Raises:
            StateError: the file is corrupt.
        """
        if not os.path.exists(self.path):
            return {}
        try:
            data = read_json(self.path)
        except ValueError:
            raise StateError("outbox.json is corrupt") from None
        if not isinstance(data, dict):
            raise StateError("outbox.json is corrupt")
        return {str(qid): sent_query_from_json(str(qid), rec) for qid, rec in data.items()}

    def get(self, query_id: str) -> SentSealedQuery | SentBlindQuery | None:
        """One record, or None.

        Args:
            query_id: the query's id.

        Returns:
            The record, or None if this state never sent that query.

        Raises:
            StateError: the file is corrupt.
        """
        return self.load().get(query_id)

    def put(self, record: SentQuery) -> None:
        """Add or replace one record (atomic write of the whole file).

        Args:
            record: the record; its query id is the key.

        Raises:
            StateError: the file is corrupt.
        """
        data = {qid: rec.to_json() for qid, rec in self.load().items()}
        data[record.query_id] = record.to_json()
        atomic_write_json(self.path, data)
