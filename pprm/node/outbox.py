"""The requester's outbox: the queries a state sent, and what came back for each.

``DIR/outbox.json`` maps each query id to one record. The JSON keys are the
ones pprm has always written, so existing state directories open unchanged::

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
this state's own data on its own disk (``outbox.json`` is 0600), written
only when present and dropped once no follow-up can follow (no hit, a
refusal, an abandoned query); records written before pprm kept probes have
none, and a follow-up on them is refused locally
(:class:`~pprm.errors.ProbeNotKeptError`). ``followups`` lists the ids of
the follow-ups sent on the answer, ``followups_refused`` those the peer
refused with a signed refusal. The optional keys are written only when set,
so a record that never had them is written back key for key.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

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
        probe on its own disk, in the 0600 ``outbox.json``, and never leaves
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
                              candidates=None if candidates is None else tuple(candidates),
                              probe=_probe(obj), followups=_texts(obj, "followups"),
                              followups_refused=_texts(obj, "followups_refused"))
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
