"""Append-only, hash-chained audit log with signed checkpoints (docs/DESIGN.md section 7).

Each line of ``audit.log`` is canonical JSON ``{seq, time, event, data, prev, hash}``
where ``hash = SHA-256(tag | canonical entry without hash)`` and ``prev`` is the
previous line's hash. Editing, deleting, inserting or reordering a line breaks
the chain at that line. A bare chain cannot prove that nothing was cut off its
end, nor that a forger did not recompute every hash after an edit, so the
state's Ed25519 identity signs the chain in two places:

* **Checkpoints in the log.** An entry ``event="checkpoint"`` with
  ``data = {state, covers, sig}``: ``covers`` is the seq of the line before it
  and ``sig`` (hex) signs that line's hash. One follows an append whenever it
  lands on a line number divisible by 16 (lines 16, 32, ...), and one right
  after the first signed append (where signing starts, e.g. in a log that
  predates signing). A checkpoint proves every line up to it genuine, even
  without the sidecar below.
* **The signed head**, ``audit.head`` beside the log: canonical JSON
  ``{state, seq, hash, policy, sig}`` for the last line, rewritten atomically
  (temp file, fsync, rename) after every append. The log must end exactly
  there: a shorter log lost lines at the end, a longer one has an unsigned
  tail, and a different hash at that line means the log was rewritten.
  ``policy`` is the digest of the state's policy
  (:func:`pprm.node.config.policy_digest`) as last recorded by an ``init`` or
  ``policy`` entry (null before any is), so the signature covers the policy in
  force: :meth:`AuditLog.check` and :meth:`AuditLog.check_policy` refuse a
  ``state.json`` whose policy is another one (a hand edit). Heads written
  before the policy was covered, ``{state, seq, hash, sig}`` under their own
  domain tag, are still read; the next append replaces them.

Each signature covers a domain tag (one for checkpoints, another for heads, so
one cannot stand in for the other), the state name, the seq and the hash.
An append costs one head check (an Ed25519 verification), one signature (two
when a checkpoint follows) and one small atomic write: under a millisecond.
:class:`AuditLog` gets a signer callable and the public identity, never the
private key itself. Appends refuse to extend a log that does not end at its
signed head, so a cut or an appended forgery is not signed over later.

A log written before signing existed (no checkpoint, no head) still verifies,
with zero checkpoints; the first signed append starts signing it. Once a log
has a checkpoint, its head is required. A log with no policy entry (a state
created before policies were recorded) has no audited policy: nothing is
compared until the first ``pprm policy set`` records one. What signing cannot
catch: someone who kept an old ``audit.head`` and cuts the log back to it;
compare the head seq reported by ``pprm audit verify --json`` with an earlier
one to catch that.

Templates, probes and scores never enter the log: :meth:`AuditLog.append`
refuses fields that could carry them, and values must be scalars.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from pprm._fs import atomic_write_bytes
from pprm.crypto.identity import PublicIdentity
from pprm.errors import AuthenticationError, PolicyTamperedError, StateError
from pprm.node.config import (
    POLICY_FIELDS,
    StateConfig,
    parse_policy_text,
    policy_digest,
    policy_of,
    policy_text_digest,
    read_state_config,
)
from pprm.protocol import canonical

__all__ = ["AuditLog", "AuditReport", "CHECKPOINT", "CHECKPOINT_EVERY", "CRASH_WINDOW", "GENESIS", "POLICY_EVENTS",
           "RESUMED", "RecordedPolicy", "Signer"]

GENESIS = "0" * 64
CHECKPOINT = "checkpoint"
# Lines whose 1-based number is a multiple of this are checkpoints.
CHECKPOINT_EVERY = 16
# One append writes an entry and at most one checkpoint, then re-signs the
# head: a crash in between leaves at most this many lines after the head.
CRASH_WINDOW = 2
RESUMED = "resumed"
# The events that record a policy (fields ``policy``: its canonical text, and
# ``policy_digest``); the signed head carries the last one's digest.
POLICY_EVENTS = ("init", "policy")
# Field names that would carry biometric data or scores are refused outright.
_FORBIDDEN = {"probe", "template", "templates", "score", "scores", "embedding", "values"}
_SCALARS = (str, int, bool, type(None))
_CHECKPOINT_TAG = b"pprm/audit/checkpoint/v1\x00"
# v1 heads sign (state, seq, hash); v2 heads also the policy digest.
_HEAD_TAG = b"pprm/audit/head/v1\x00"
_HEAD_TAG_V2 = b"pprm/audit/head/v2\x00"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")

Signer = Callable[[bytes], bytes]


def _at(line: int) -> str:
    """Where a line of the log is, as ``pprm audit show`` numbers it (seq, from 0) and as an editor does."""
    return f"seq {line - 1} (line {line})"


def _hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(b"pprm/audit/v1\x00" + canonical.encode(entry)).hexdigest()


def _signed_message(tag: bytes, state: str, seq: int, digest: str) -> bytes:
    return tag + canonical.encode({"hash": digest, "seq": seq, "state": state})


def _head_message(state: str, seq: int, digest: str, policy: str | None) -> bytes:
    return _HEAD_TAG_V2 + canonical.encode({"hash": digest, "policy": policy, "seq": seq, "state": state})


class _Head(NamedTuple):
    """A signed head, signature checked. ``covers_policy``: a v2 head, whose ``policy`` is signed."""

    seq: int
    hash: str
    policy: str | None
    covers_policy: bool


def _recorded_digest(entry: dict[str, Any]) -> str | None:
    """The policy digest a parsed entry records, or None."""
    data = entry.get("data")
    if entry.get("event") in POLICY_EVENTS and isinstance(data, dict):
        digest = data.get("policy_digest")
        if isinstance(digest, str):
            return digest
    return None


@dataclass(frozen=True)
class RecordedPolicy:
    """The policy the audit log last recorded.

    Attributes:
        digest: its digest (as the signed head names it).
        text: its canonical JSON, from the entry that recorded it.
        seq: that entry's seq.
    """

    digest: str
    text: str
    seq: int

    @property
    def fields(self) -> dict[str, Any]:
        """The recorded policy's settings (:data:`pprm.node.config.POLICY_FIELDS`)."""
        return parse_policy_text(self.text)


@dataclass(frozen=True)
class AuditReport:
    """What :meth:`AuditLog.check` found.

    Attributes:
        entries: lines in the log, checkpoints included.
        checkpoints: signed checkpoints among them.
        head: seq of the signed head, or None for an unsigned log.
        unsigned: lines after the signed head (at most :data:`CRASH_WINDOW`:
            what a crash between writing a line and re-signing the head leaves).
        policy: digest of the audited policy (the last one recorded up to the
            signed head; in an unsigned log, the last one recorded), or None
            when the log records none.
    """

    entries: int
    checkpoints: int
    head: int | None
    unsigned: int = 0
    policy: str | None = None


class AuditLog:
    """The log file of one state.

    Args:
        path: the log file (created on first append).
        signer: signs with the state's identity (``Identity.sign``); without
            it, appends are refused once the log is signed.
        public: the state's public identity, to check signatures; without it,
            a signed log cannot be verified.
        head_path: the signed head (default: ``path`` with suffix ``.head``).
        config_path: the state's configuration, whose policy :meth:`check`
            compares with the audited one (default: ``state.json`` beside
            the log; not compared when that file does not exist).
    """

    def __init__(self, path: str, *, signer: Signer | None = None, public: PublicIdentity | None = None,
                 head_path: str | None = None, config_path: str | None = None) -> None:
        if signer is not None and public is None:
            raise ValueError("a signing audit log needs the public identity too")
        self.path = path
        self.head_path = head_path if head_path is not None else os.path.splitext(path)[0] + ".head"
        self.config_path = (config_path if config_path is not None
                            else os.path.join(os.path.dirname(os.path.abspath(path)), "state.json"))
        self._signer = signer
        self._public = public

    @property
    def _head_name(self) -> str:
        return os.path.basename(self.head_path)

    # -- reading ---------------------------------------------------------
    def _tail(self) -> tuple[int, str]:
        if not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
            return 0, GENESIS
        with open(self.path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - 65536))
            last = fh.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
        try:
            obj = json.loads(last)
            return int(obj["seq"]) + 1, str(obj["hash"])
        except (ValueError, KeyError, TypeError):
            raise StateError("audit log ends in a damaged line; run 'pprm audit verify'") from None

    def entries(self, *, checkpoints: bool = False) -> list[dict[str, Any]]:
        """All entries, parsed (not verified).

        Args:
            checkpoints: include the signed checkpoint entries.
        """
        if not os.path.exists(self.path):
            return []
        out = []
        with open(self.path, "rb") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    raise StateError(f"audit log entry {_at(n)} is damaged") from None
                if not isinstance(entry, dict):
                    raise StateError(f"audit log entry {_at(n)} is damaged")
                if checkpoints or entry.get("event") != CHECKPOINT:
                    out.append(entry)
        return out

    def _read_head(self) -> _Head | None:
        """The signed head, signature checked; None if there is no head."""
        try:
            with open(self.head_path, "rb") as fh:
                blob = fh.read()
        except FileNotFoundError:
            return None
        try:
            head = canonical.decode(blob.rstrip(b"\n"), "audit head")
            state, seq, digest, sig = head["state"], head["seq"], head["hash"], head["sig"]
            covers_policy = "policy" in head
            policy = head.get("policy")
            if (set(head) - {"policy"} != {"state", "seq", "hash", "sig"} or not isinstance(state, str)
                    or type(seq) is not int or seq < 0 or not isinstance(digest, str)
                    or not _HEX64.fullmatch(digest) or not isinstance(sig, str) or not _HEX128.fullmatch(sig)
                    or not (policy is None or (isinstance(policy, str) and _HEX64.fullmatch(policy)))):
                raise ValueError
        except (ValueError, KeyError):
            raise StateError(f"audit log's signed head {self._head_name} is damaged") from None
        if self._public is None:
            raise StateError(f"audit log is signed ({self._head_name}); checking it needs the state's key"
                             " (use 'pprm audit verify DIR')")
        if state != self._public.name:
            raise StateError(f"audit log's signed head {self._head_name} is for state {state!r}")
        # A v1 head (no policy field) verifies under the v1 tag only, a v2
        # head under the v2 tag only: neither can pass for the other.
        message = (_head_message(state, seq, digest, policy) if covers_policy
                   else _signed_message(_HEAD_TAG, state, seq, digest))
        try:
            self._public.verify(message, bytes.fromhex(sig))
        except AuthenticationError:
            raise StateError(f"audit log's signed head {self._head_name} has a bad signature") from None
        return _Head(seq, digest, policy, covers_policy)

    def _check_checkpoint(self, entry: dict[str, Any], line: int) -> None:
        data = entry.get("data")
        if (not isinstance(data, dict) or set(data) != {"state", "covers", "sig"} or line < 2
                or data["covers"] != line - 2 or not isinstance(data["state"], str)
                or not isinstance(data["sig"], str) or not _HEX128.fullmatch(data["sig"])):
            raise StateError(f"audit log checkpoint at {_at(line)} is malformed")
        if self._public is None:
            raise StateError(f"audit log checkpoint at {_at(line)} cannot be checked without the state's key"
                             " (use 'pprm audit verify DIR')")
        if data["state"] != self._public.name:
            raise StateError(f"audit log checkpoint at {_at(line)} is for state {data['state']!r}")
        msg = _signed_message(_CHECKPOINT_TAG, data["state"], line - 2, str(entry["prev"]))
        try:
            self._public.verify(msg, bytes.fromhex(data["sig"]))
        except AuthenticationError:
            raise StateError(f"audit log checkpoint at {_at(line)} has a bad signature") from None

    # -- writing ---------------------------------------------------------
    @staticmethod
    def _entry(seq: int, prev: str, event: str, data: dict[str, Any]) -> dict[str, Any]:
        entry: dict[str, Any] = {"seq": seq, "time": int(time.time()), "event": event, "data": data, "prev": prev}
        entry["hash"] = _hash(entry)
        return entry

    def append(self, event: str, **data: Any) -> dict[str, Any]:
        """Append one entry (callers hold the state lock), then sign.

        With a signer, the log must end at its signed head (or have neither
        head nor checkpoint: a log that predates signing). A checkpoint entry
        follows when the next line number is a multiple of 16, or when signing
        starts; the head is then rewritten for the last line.

        The signed head carries the policy digest of the last ``init`` or
        ``policy`` entry (this one, if it records a policy).

        Args:
            event: short event name, e.g. ``answer`` (not ``checkpoint``).
            **data: scalar fields (str, int, bool, None). ``policy`` and
                ``policy_digest`` (a canonical policy text and its digest)
                only with the events of :data:`POLICY_EVENTS`, and together.

        Returns:
            The entry as written.

        Raises:
            StateError: a forbidden or non-scalar field, a policy without its
                matching digest, a damaged log, or a log that does not end at
                its signed head.
        """
        if event == CHECKPOINT:
            raise StateError("audit event name 'checkpoint' is reserved")
        bad = _FORBIDDEN.intersection(data)
        if bad:
            raise StateError(f"audit entries may not carry {sorted(bad)[0]!r}")
        if any(not isinstance(v, _SCALARS) or isinstance(v, float) for v in data.values()):
            raise StateError("audit fields must be strings, integers, booleans or null")
        if "policy" in data or "policy_digest" in data:
            self._check_recorded_policy(event, data)
        seq, prev = self._tail()
        if self._signer is None or self._public is None:
            if os.path.exists(self.head_path):
                raise StateError("audit log is signed; appending to it needs the state's signing key")
            entry = self._entry(seq, prev, event, data)
            self._write([entry])
            return entry
        head = self._read_head()
        if head is None and any(e.get("event") == CHECKPOINT for e in self.entries(checkpoints=True)):
            raise StateError(f"audit log has signed checkpoints but its signed head {self._head_name}"
                             " is missing; run 'pprm audit verify'")
        written: list[dict[str, Any]] = []
        resumed = head is not None and (head.seq, head.hash) != (seq - 1, prev)
        if head is not None and resumed:
            # A crash between writing lines and re-signing the head leaves a
            # short, chain-valid tail; _check_log() has verified it. Say so in
            # the log before signing over it, so an auditor sees where it was.
            rep = self._check_log()
            if not rep.unsigned:
                raise StateError("audit log does not end at its signed head; run 'pprm audit verify'")
            written.append(self._entry(seq, prev, RESUMED, {"unsigned_from": head.seq + 2, "unsigned_to": seq}))
            seq, prev = seq + 1, written[-1]["hash"]
        # The policy the new head signs: the head's own, unless this append
        # starts signing, follows an older head, or signs over an unsigned
        # tail; then the last one the log records (a scan, rare).
        if head is not None and head.covers_policy and not resumed:
            policy = head.policy
        else:
            last = self._last_recorded()
            policy = last[0] if last is not None else None
        state, signer = self._public.name, self._signer
        entry = self._entry(seq, prev, event, data)
        written.append(entry)
        if head is None or (seq + 2) % CHECKPOINT_EVERY == 0:
            sig = signer(_signed_message(_CHECKPOINT_TAG, state, seq, entry["hash"]))
            written.append(self._entry(seq + 1, entry["hash"], CHECKPOINT,
                                       {"state": state, "covers": seq, "sig": sig.hex()}))
        self._write(written)
        policy = _recorded_digest(entry) or policy
        end = written[-1]
        sig = signer(_head_message(state, end["seq"], end["hash"], policy))
        head_blob = canonical.encode({"state": state, "seq": end["seq"], "hash": end["hash"], "policy": policy,
                                      "sig": sig.hex()})
        atomic_write_bytes(self.head_path, head_blob + b"\n", 0o600)
        return entry

    @staticmethod
    def _check_recorded_policy(event: str, data: dict[str, Any]) -> None:
        """An entry recording a policy carries its canonical text and that text's digest."""
        if event not in POLICY_EVENTS:
            raise StateError(f"only {' and '.join(POLICY_EVENTS)} audit entries may record a policy")
        text, digest = data.get("policy"), data.get("policy_digest")
        if not isinstance(text, str) or not isinstance(digest, str) or not text.isascii():
            raise StateError("an audit entry recording a policy needs its text and its digest")
        if policy_text_digest(text) != digest:
            raise StateError("an audit entry's policy digest does not match its policy text")
        parse_policy_text(text)

    def _write(self, entries: list[dict[str, Any]]) -> None:
        blob = b"".join(canonical.encode(e) + b"\n" for e in entries)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, blob)
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- verifying -------------------------------------------------------
    def check(self) -> AuditReport:
        """Check the chain, every checkpoint, the signed head, and the policy in force.

        The policy check compares the policy in :attr:`config_path`
        (``state.json``) with the audited one (:attr:`AuditReport.policy`);
        it is skipped when that file does not exist or the log records no
        policy yet.

        Returns:
            Line count, checkpoint count, the head's seq and the audited
            policy's digest.

        Raises:
            PolicyTamperedError: ``state.json`` holds another policy than the
                audited one (the message names the settings that differ).
            StateError: one line naming the first entry (by seq and line) or the head that
                fails, or an unreadable ``state.json``.
        """
        rep = self._check_log()
        if rep.policy is not None and os.path.isfile(self.config_path):
            self._compare_policy(read_state_config(self.config_path), rep.policy)
        return rep

    def _check_log(self) -> AuditReport:
        """:meth:`check` without the policy comparison (appends use this)."""
        head = self._read_head()
        prev = GENESIS
        n = checkpoints = last_checkpoint = 0
        at_head: str | None = None
        policy: str | None = None
        policy_at_head: str | None = None
        if os.path.exists(self.path):
            with open(self.path, "rb") as fh:
                for n, line in enumerate(fh, start=1):
                    try:
                        entry = canonical.decode(line.rstrip(b"\n"), "audit line")
                        claimed = entry.pop("hash")
                    except (ValueError, KeyError):
                        raise StateError(f"audit log entry {_at(n)} is damaged") from None
                    if entry.get("seq") != n - 1 or entry.get("prev") != prev or _hash(entry) != claimed:
                        raise StateError(f"audit log chain breaks at {_at(n)}")
                    if entry.get("event") == CHECKPOINT:
                        self._check_checkpoint(entry, n)
                        checkpoints += 1
                        if head is None or n <= head.seq + 1:
                            last_checkpoint = n
                    policy = _recorded_digest(entry) or policy
                    if head is not None and n - 1 == head.seq:
                        at_head, policy_at_head = claimed, policy
                    prev = claimed
        if head is None:
            if checkpoints:
                raise StateError(f"audit log has signed checkpoints but its signed head {self._head_name} is"
                                 f" missing: entries after {_at(last_checkpoint)} may have been deleted")
            return AuditReport(n, 0, None, 0, policy)
        head_line = head.seq + 1
        if n < head_line:
            where = f"ends at {_at(n)}" if n else "is empty"
            raise StateError(f"audit log {where} but the signed head is at {_at(head_line)}: entries deleted")
        if at_head != head.hash:
            since = f" after {_at(last_checkpoint)}" if last_checkpoint else ""
            raise StateError(f"audit log entry {_at(head_line)} does not match the signed head:"
                             f" the log was rewritten{since}")
        if n > head_line + CRASH_WINDOW:
            tail = f"seq {head_line}-{n - 1} (lines {head_line + 1}-{n}) are"
            raise StateError(f"audit log continues past the signed head at {_at(head_line)}: {tail} unsigned")
        if head.covers_policy and head.policy != policy_at_head:
            # Cannot happen without the signing key: appends sign the digest
            # the log records.
            raise StateError(f"audit log's signed head {self._head_name} names another policy than the log"
                             f" records up to {_at(head_line)}")
        # Up to CRASH_WINDOW chain-valid lines past the head: what an
        # interrupted append leaves. Reported, and flagged in the log by a
        # "resumed" entry at the next append. A policy recorded there is not
        # signed yet, so the audited one is the head's.
        return AuditReport(n, checkpoints, head.seq, n - head_line, policy_at_head)

    # -- the audited policy ------------------------------------------------
    def _last_recorded(self, upto: int | None = None) -> tuple[str, str, int] | None:
        """(digest, text, seq) of the last entry recording a policy (up to seq ``upto``), unverified."""
        found: tuple[str, str, int] | None = None
        for entry in self.entries():
            seq = entry.get("seq")
            if upto is not None and (type(seq) is not int or seq > upto):
                break
            digest = _recorded_digest(entry)
            if digest is not None:
                text = entry["data"].get("policy")
                ok = isinstance(text, str) and text.isascii()
                found = (digest, text if ok else "", seq if type(seq) is int else -1)
        return found

    def policy_digest(self) -> str | None:
        """The digest of the audited policy.

        Returns:
            The policy digest under the signed head (a v2 head: one signature
            check, no scan); for an older head or an unsigned log, the last
            one the log records (a scan). None when the log records no policy.

        Raises:
            StateError: the signed head is damaged, has a bad signature, or
                the log is damaged.
        """
        head = self._read_head()
        if head is not None and head.covers_policy:
            return head.policy
        last = self._last_recorded(head.seq if head is not None else None)
        return last[0] if last is not None else None

    def recorded_policy(self) -> RecordedPolicy | None:
        """The audited policy, read back from the entry that recorded it.

        Returns:
            Its digest, canonical text and seq; None when the log records no
            policy.

        Raises:
            StateError: the entry the signed head's digest names is missing,
                or its text does not hash to that digest (the log was edited;
                :meth:`check` names where).
        """
        head = self._read_head()
        last = self._last_recorded(head.seq if head is not None else None)
        if head is not None and head.covers_policy and (last[0] if last is not None else None) != head.policy:
            raise StateError("audit log's last policy entry does not match its signed head; run 'pprm audit verify'")
        if last is None:
            return None
        if policy_text_digest(last[1]) != last[0]:
            raise StateError(f"audit log's policy entry at {_at(last[2] + 1)} does not match its digest;"
                             " run 'pprm audit verify'")
        return RecordedPolicy(*last)

    def check_policy(self, config: StateConfig) -> str | None:
        """Refuse a configuration whose policy is not the audited one.

        Args:
            config: the configuration about to be used (``state.json``).

        Returns:
            The audited policy digest (equal to the configuration's), or None
            when the log records no policy yet (a state created before
            policies were recorded): nothing to compare.

        Raises:
            PolicyTamperedError: another policy than the audited one; the
                message names the settings that differ.
            StateError: the signed head cannot be read or verified.

        Warning:
            A log that records no policy accepts any: such a state is
            protected from the first ``pprm policy set`` on, which records the
            policy it finds. Adopting ``state.json`` silently here instead
            would also adopt a hand edit made before.
        """
        audited = self.policy_digest()
        if audited is not None:
            self._compare_policy(config, audited)
        return audited

    def _compare_policy(self, config: StateConfig, audited: str) -> None:
        if policy_digest(config) == audited:
            return
        differ: tuple[str, ...] = ()
        try:
            recorded = self.recorded_policy()
            if recorded is not None and recorded.digest == audited:
                old, now = recorded.fields, policy_of(config)
                differ = tuple(f for f in POLICY_FIELDS if canonical.encode(old[f]) != canonical.encode(now[f]))
        except StateError:
            pass  # the digests differ all the same; say so without the names
        which = f" in {', '.join(differ)}" if differ else ""
        raise PolicyTamperedError(
            f"state.json's policy differs from the audited one{which} (edited by hand, or a 'pprm policy set' cut"
            " short); it is refused until 'pprm policy set DIR' records a policy (with no options it restores"
            " the audited one)", fields=differ)

    def verify(self) -> int:
        """Check the log as :meth:`check` does.

        Returns:
            The number of lines (entries and checkpoints).

        Raises:
            StateError: naming the first entry (by seq and line) where the log fails.
        """
        return self.check().entries
