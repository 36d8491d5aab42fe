"""A responder's query policy: allowed purposes and per-requester quotas.

The policy is decided after a query has been verified (signature, box,
body) and before any matching. A refused query is answered with a signed
refusal (:class:`pprm.protocol.messages.RefusalBody`) instead of an answer.

Quotas are counted in the state's database (``DIR/state.db``, :class:`QuotaLedger`):
one ``(time, case)`` row per *answered* query of each requesting state over
the last :data:`pprm.node.config.QUOTA_WINDOW` seconds; older rows are
dropped on every write. A store of its own rather than a scan of the audit
log: checking a quota stays O(queries in a day) whatever the size of the
log, and the responder's clock override (``now``) applies to it.

Changing the policy (:func:`set_policy`, ``pprm policy set``) is audited: the
change is logged with its old and new values and the new policy's digest,
which the signed audit head then covers, before ``state.json`` is rewritten.
:func:`show_policy` reports the policy and whether it is the audited one.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pprm._fs import atomic_write_json
from pprm.errors import ParameterError, StateError
from pprm.node.config import (
    POLICY_FIELDS,
    QUOTA_WINDOW,
    StateConfig,
    policy_digest,
    policy_of,
    policy_text,
    read_state_config,
)
from pprm.node.state import State
from pprm.protocol import canonical
from pprm.protocol.messages import MAX_REFUSAL_MESSAGE
from pprm.protocol.statedb import Legacy, StateDB, locate

__all__ = ["Refusal", "QuotaLedger", "decide", "PolicyReport", "PolicyChange", "show_policy", "set_policy"]


@dataclass(frozen=True)
class Refusal:
    """Why a query is refused: a reason code (on the wire) and one line for people."""

    reason: str
    message: str


class QuotaLedger:
    """The answered queries of the last 24 hours, per requesting state.

    The ledger is the ``quota`` table of the state's database
    (:mod:`pprm.protocol.statedb`, ``DIR/state.db``, 0600), one row per
    answered query: requesting state, time, case reference. A ``quota.json``
    left by an earlier pprm is imported on first use and deleted.

    Args:
        path: the ledger's former JSON file (``DIR/quota.json``): the rows
            live in ``DIR/state.db`` under the file's name without ``.json``.
            Callers hold the state lock around check-and-record.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        directory, self.name = locate(path)
        self._db = StateDB(directory)
        self._legacy = Legacy(path, self.name, self._parse, self._load)

    def __repr__(self) -> str:
        return f"QuotaLedger({self.path!r})"

    def _parse(self, raw: bytes) -> dict[str, list[tuple[int, str]]]:
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise TypeError
            out: dict[str, list[tuple[int, str]]] = {}
            for peer, rows in data.items():
                entries = []
                for when, case in rows:
                    if type(when) is not int or not isinstance(case, str) or not -(1 << 62) < when < 1 << 62:
                        raise TypeError
                    entries.append((when, case))
                out[str(peer)] = entries
            return out
        except (ValueError, TypeError, AttributeError):
            raise StateError(f"{os.path.basename(self.path)} is corrupt") from None

    def _load(self, conn: sqlite3.Connection, rows: Mapping[str, Sequence[tuple[int, str]]]) -> int:
        values = [(self.name, peer, when, case) for peer, entries in rows.items() for when, case in entries]
        conn.executemany("INSERT INTO quota (ledger, peer, at, case_ref) VALUES (?, ?, ?, ?)", values)
        return len(values)

    def usage(self, peer: str, case: str, now: float) -> tuple[int, int]:
        """What ``peer`` used of its quotas in the window ending at ``now``.

        Args:
            peer: the requesting state.
            case: the case reference of the query being decided.
            now: the time of the decision.

        Returns:
            ``(queries for this case, queries in all)`` answered for ``peer``
            in the last :data:`~pprm.node.config.QUOTA_WINDOW` seconds.

        Raises:
            StateError: the ledger (database, or a legacy ``quota.json``) is corrupt.
        """
        with self._db.read(self._legacy) as conn:
            if conn is None:
                return 0, 0
            total, same = conn.execute(
                "SELECT count(*), coalesce(sum(case_ref = ?), 0) FROM quota WHERE ledger = ? AND peer = ? AND at > ?",
                (case, self.name, peer, now - QUOTA_WINDOW)).fetchone()
        return int(same), int(total)

    def record(self, peer: str, case: str, now: float) -> None:
        """Count one answered query, and drop what has left the window, in one durable transaction.

        Args:
            peer: the requesting state.
            case: the query's case reference.
            now: the time it was answered (caller holds the state lock).

        Raises:
            StateError: the ledger is corrupt or unwritable.

        Warning:
            Rows older than the window are deleted (and overwritten on disk):
            the ledger then no longer shows which cases a peer asked about
            before; the audit log keeps every answer.
        """
        with self._db.write(self._legacy) as conn:
            conn.execute("INSERT INTO quota (ledger, peer, at, case_ref) VALUES (?, ?, ?, ?)",
                         (self.name, peer, int(now), case))
            conn.execute("DELETE FROM quota WHERE ledger = ? AND at <= ?", (self.name, now - QUOTA_WINDOW))

    def entries(self) -> dict[str, list[tuple[int, str]]]:
        """Every row kept, by requesting state, oldest first: what ``quota.json`` held (O(rows)).

        Returns:
            Peer -> ``[(time, case), ...]``.

        Raises:
            StateError: the ledger is corrupt.
        """
        out: dict[str, list[tuple[int, str]]] = {}
        with self._db.read(self._legacy) as conn:
            if conn is not None:
                for peer, when, case in conn.execute(
                        "SELECT peer, at, case_ref FROM quota WHERE ledger = ? ORDER BY peer, at, rowid",
                        (self.name,)):
                    out.setdefault(peer, []).append((when, case))
        return out

    def merge(self, rows: Mapping[str, Sequence[tuple[int, str]]]) -> int:
        """Add rows in bulk (to copy a ledger into another directory's); nothing is pruned or de-duplicated.

        Args:
            rows: peer -> ``[(time, case), ...]``, as :meth:`entries` returns.

        Returns:
            How many rows were added.

        Raises:
            StateError: the database is corrupt or unwritable.
        """
        with self._db.write(self._legacy) as conn:
            return self._load(conn, rows)


def _line(text: str) -> str:
    return text if len(text) <= MAX_REFUSAL_MESSAGE else text[:MAX_REFUSAL_MESSAGE - 3] + "..."


def decide(config: StateConfig, ledger: QuotaLedger, peer: str, case: str, purpose: str,
           now: float) -> Refusal | None:
    """The responder's decision on a verified query: None to answer it, else why not.

    Checked in this order: the purpose (an exact string on ``config.purposes``),
    the requester's quota for this case, its quota over all cases.
    """
    me = config.name
    if purpose not in config.purposes:
        return Refusal("purpose", _line(f"{me} answers only for the purposes {', '.join(config.purposes)}"))
    per_case, per_peer = ledger.usage(peer, case, now)
    if per_case >= config.quota_per_case:
        return Refusal("quota-case", f"{me} answers at most {config.quota_per_case} queries per case from "
                                     f"{peer} in 24 hours; try again later")
    if per_peer >= config.quota_per_peer:
        return Refusal("quota-peer", f"{me} answers at most {config.quota_per_peer} queries from {peer} "
                                     f"in 24 hours; try again later")
    return None


# -- showing and changing the policy ------------------------------------------------------

PolicyStatus = Literal["audited", "differs", "unaudited"]


def _json(value: Any) -> str:
    """A setting's value as canonical JSON text (audit fields are scalars, never floats)."""
    return canonical.encode(value).decode("ascii")


def _differing(a: dict[str, Any], b: dict[str, Any]) -> tuple[str, ...]:
    return tuple(f for f in POLICY_FIELDS if _json(a[f]) != _json(b[f]))


def _settings(config: StateConfig) -> dict[str, Any]:
    """The policy settings of a configuration, without the format tag."""
    pol = policy_of(config)
    return {f: pol[f] for f in POLICY_FIELDS}


@dataclass(frozen=True)
class PolicyReport:
    """A state's policy and how it stands against the audit log (:func:`show_policy`).

    Attributes:
        state: the state code.
        policy: the settings in ``state.json`` (:data:`pprm.node.config.POLICY_FIELDS`).
        digest: their digest (:func:`pprm.node.config.policy_digest`).
        audited: the digest the signed audit head covers; None when the log
            records no policy yet.
        status: ``audited`` (the two digests are equal), ``differs`` (a hand
            edit, or an interrupted ``policy set``: the state refuses to
            answer) or ``unaudited`` (no policy recorded yet).
        differs: the settings that differ from the audited policy.
    """

    state: str
    policy: dict[str, Any]
    digest: str
    audited: str | None
    status: PolicyStatus
    differs: tuple[str, ...] = ()


@dataclass(frozen=True)
class PolicyChange:
    """What :func:`set_policy` did.

    Attributes:
        state: the state code.
        policy: the settings now in force.
        digest: their digest, as recorded and covered by the signed head.
        previous: the audited digest before (None: the log recorded no policy).
        changed: setting -> (audited value before, value now), for each
            setting that changed.
        restored: settings whose value in ``state.json`` differed from the
            audited policy (a hand edit, or an interrupted ``policy set``) and
            that now hold the audited (or newly given) value.
        recorded: whether an audit entry was written (not when nothing
            changed).
    """

    state: str
    policy: dict[str, Any]
    digest: str
    previous: str | None
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    restored: tuple[str, ...] = ()
    recorded: bool = True


def show_policy(state: State) -> PolicyReport:
    """A state's policy, as ``state.json`` holds it, against the audited one.

    Args:
        state: an opened state (its ``state.json`` is read again).

    Returns:
        The settings, their digest, the audited digest and the status.

    Raises:
        StateError: ``state.json`` is invalid, or the audit log's head or
            policy entry cannot be read or verified.
    """
    config = read_state_config(state.path("state.json"))
    settings, digest = _settings(config), policy_digest(config)
    audited = state.audit.policy_digest()
    if audited is None:
        return PolicyReport(config.name, settings, digest, None, "unaudited")
    if audited == digest:
        return PolicyReport(config.name, settings, digest, audited, "audited")
    recorded = state.audit.recorded_policy()
    differs = _differing(recorded.fields, settings) if recorded is not None else ()
    return PolicyReport(config.name, settings, digest, audited, "differs", differs)


def set_policy(state: State, *, profile_changes: Mapping[str, str | None] | None = None,
               **changes: Any) -> PolicyChange:
    """Change a state's policy, audited.

    Under the state lock: the new policy is the audited one (or, for a state
    whose log records none yet, the one in ``state.json``) with ``changes``
    applied, validated as :class:`~pprm.node.config.StateConfig` validates
    every setting. The audit log then gets a ``policy`` entry (``changed``:
    the settings that changed, ``<setting>_old`` / ``<setting>_new`` their
    values as canonical JSON text; ``restored`` and ``<setting>_found`` for
    settings whose value in ``state.json`` was not the audited one;
    ``previous_digest``, ``policy`` and ``policy_digest``), the signed head
    covers the new digest, and ``state.json`` is rewritten atomically. With
    no changes and ``state.json`` already holding the audited policy, nothing
    is written.

    Args:
        state: an opened state; its ``config`` is updated.
        **changes: new values for settings of
            :data:`pprm.node.config.POLICY_FIELDS` (``threshold``, ``k``,
            ``purposes``, ``quota_per_case``, ``quota_per_peer``,
            ``profiles``, ``query_ttl``, ``token_ttl``, ``blind_key_ttl``).
        profile_changes: per-peer profiles to set (``"sealed"`` or
            ``"blind"``) or, with None, to drop (the peer then gets
            ``"sealed"``), leaving the other peers' as they are; not together
            with ``profiles``.

    Returns:
        What changed, and the new digest.

    Raises:
        ParameterError: a setting that is not a policy setting, or a value of
            the wrong type or out of range (the message names the setting);
            nothing is changed.
        StateError: ``state.json`` is invalid, or the audit log cannot be
            appended to; nothing is changed.

    Warning:
        A value of ``state.json`` that differs from the audited policy is
        never adopted silently: it is replaced by the audited value (or the
        one given), and the entry names it under ``restored``. For a state
        whose log records no policy yet, the policy in ``state.json`` is
        adopted as found (review it with ``pprm policy show`` first) and
        recorded with ``previous_digest`` null. A running ``pprm serve``
        keeps the policy it started with until it is restarted.
    """
    unknown = sorted(set(changes) - set(POLICY_FIELDS))
    if unknown:
        raise ParameterError(f"{unknown[0]!r} is not a policy setting; they are: {', '.join(POLICY_FIELDS)}")
    if profile_changes is not None and "profiles" in changes:
        raise ParameterError("give either profiles or profile_changes, not both")
    with state.lock():
        current = read_state_config(state.path("state.json"))
        found = _settings(current)
        recorded = state.audit.recorded_policy()
        audited = recorded.fields if recorded is not None else found
        try:
            base = replace(current, **audited)
        except ParameterError as exc:
            raise StateError(f"the audited policy does not validate: {exc}") from None
        if profile_changes is not None:
            profiles: dict[str, Any] = dict(base.profiles)
            for peer, profile in profile_changes.items():
                if profile is None:
                    profiles.pop(peer, None)
                else:
                    profiles[peer] = profile
            changes["profiles"] = profiles
        new = replace(base, **changes)
        before, after = _settings(base), _settings(new)
        changed = _differing(before, after)
        restored = _differing(found, before)
        digest = policy_digest(new)
        if recorded is not None and not changed and not restored:
            state.config = current
            return PolicyChange(current.name, after, digest, recorded.digest, recorded=False)
        data: dict[str, Any] = {"changed": ",".join(changed), "restored": ",".join(restored),
                                "previous_digest": recorded.digest if recorded is not None else None}
        for f in changed:
            data[f"{f}_old"], data[f"{f}_new"] = _json(before[f]), _json(after[f])
        for f in restored:
            data[f"{f}_found"] = _json(found[f])
        # Logged first, then written: a crash in between leaves state.json
        # behind the audited policy, which is refused like a hand edit until
        # `pprm policy set DIR` (no options) writes the audited policy.
        state.audit.append("policy", **data, policy=policy_text(new), policy_digest=digest)
        atomic_write_json(state.path("state.json"), new.to_json())
    state.config = new
    return PolicyChange(new.name, after, digest, recorded.digest if recorded is not None else None,
                        {f: (before[f], after[f]) for f in changed}, restored)
