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
  ``{state, seq, hash, sig}`` for the last line, rewritten atomically (temp
  file, fsync, rename) after every append. The log must end exactly there:
  a shorter log lost lines at the end, a longer one has an unsigned tail, and a
  different hash at that line means the log was rewritten.

Each signature covers a domain tag (one for checkpoints, another for heads, so
one cannot stand in for the other), the state name, the seq and the hash.
An append costs one head check (an Ed25519 verification), one signature (two
when a checkpoint follows) and one small atomic write: under a millisecond.
:class:`AuditLog` gets a signer callable and the public identity, never the
private key itself. Appends refuse to extend a log that does not end at its
signed head, so a cut or an appended forgery is not signed over later.

A log written before signing existed (no checkpoint, no head) still verifies,
with zero checkpoints; the first signed append starts signing it. Once a log
has a checkpoint, its head is required. What signing cannot catch: someone who
kept an old ``audit.head`` and cuts the log back to it; compare the head seq
reported by ``pprm audit verify --json`` with an earlier one to catch that.

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
from typing import Any

from pprm._fs import atomic_write_bytes
from pprm.crypto.identity import PublicIdentity
from pprm.errors import AuthenticationError, StateError
from pprm.protocol import canonical

__all__ = ["AuditLog", "AuditReport", "CHECKPOINT", "CHECKPOINT_EVERY", "CRASH_WINDOW", "GENESIS", "RESUMED",
           "Signer"]

GENESIS = "0" * 64
CHECKPOINT = "checkpoint"
# Lines whose 1-based number is a multiple of this are checkpoints.
CHECKPOINT_EVERY = 16
# One append writes an entry and at most one checkpoint, then re-signs the
# head: a crash in between leaves at most this many lines after the head.
CRASH_WINDOW = 2
RESUMED = "resumed"
# Field names that would carry biometric data or scores are refused outright.
_FORBIDDEN = {"probe", "template", "templates", "score", "scores", "embedding", "values"}
_SCALARS = (str, int, bool, type(None))
_CHECKPOINT_TAG = b"pprm/audit/checkpoint/v1\x00"
_HEAD_TAG = b"pprm/audit/head/v1\x00"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")

Signer = Callable[[bytes], bytes]


def _hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(b"pprm/audit/v1\x00" + canonical.encode(entry)).hexdigest()


def _signed_message(tag: bytes, state: str, seq: int, digest: str) -> bytes:
    return tag + canonical.encode({"hash": digest, "seq": seq, "state": state})


@dataclass(frozen=True)
class AuditReport:
    """What :meth:`AuditLog.check` found.

    Attributes:
        entries: lines in the log, checkpoints included.
        checkpoints: signed checkpoints among them.
        head: seq of the signed head, or None for an unsigned log.
        unsigned: lines after the signed head (at most :data:`CRASH_WINDOW`:
            what a crash between writing a line and re-signing the head leaves).
    """

    entries: int
    checkpoints: int
    head: int | None
    unsigned: int = 0


class AuditLog:
    """The log file of one state.

    Args:
        path: the log file (created on first append).
        signer: signs with the state's identity (``Identity.sign``); without
            it, appends are refused once the log is signed.
        public: the state's public identity, to check signatures; without it,
            a signed log cannot be verified.
        head_path: the signed head (default: ``path`` with suffix ``.head``).
    """

    def __init__(self, path: str, *, signer: Signer | None = None, public: PublicIdentity | None = None,
                 head_path: str | None = None) -> None:
        if signer is not None and public is None:
            raise ValueError("a signing audit log needs the public identity too")
        self.path = path
        self.head_path = head_path if head_path is not None else os.path.splitext(path)[0] + ".head"
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
                    raise StateError(f"audit log line {n} is damaged") from None
                if not isinstance(entry, dict):
                    raise StateError(f"audit log line {n} is damaged")
                if checkpoints or entry.get("event") != CHECKPOINT:
                    out.append(entry)
        return out

    def _read_head(self) -> tuple[int, str] | None:
        """The signed head's (seq, hash), signature checked; None if there is no head."""
        try:
            with open(self.head_path, "rb") as fh:
                blob = fh.read()
        except FileNotFoundError:
            return None
        try:
            head = canonical.decode(blob.rstrip(b"\n"), "audit head")
            state, seq, digest, sig = head["state"], head["seq"], head["hash"], head["sig"]
            if (set(head) != {"state", "seq", "hash", "sig"} or not isinstance(state, str)
                    or type(seq) is not int or seq < 0 or not isinstance(digest, str)
                    or not _HEX64.fullmatch(digest) or not isinstance(sig, str) or not _HEX128.fullmatch(sig)):
                raise ValueError
        except (ValueError, KeyError):
            raise StateError(f"audit log's signed head {self._head_name} is damaged") from None
        if self._public is None:
            raise StateError(f"audit log is signed ({self._head_name}); checking it needs the state's key"
                             " (use 'pprm audit verify DIR')")
        if state != self._public.name:
            raise StateError(f"audit log's signed head {self._head_name} is for state {state!r}")
        try:
            self._public.verify(_signed_message(_HEAD_TAG, state, seq, digest), bytes.fromhex(sig))
        except AuthenticationError:
            raise StateError(f"audit log's signed head {self._head_name} has a bad signature") from None
        return seq, digest

    def _check_checkpoint(self, entry: dict[str, Any], line: int) -> None:
        data = entry.get("data")
        if (not isinstance(data, dict) or set(data) != {"state", "covers", "sig"} or line < 2
                or data["covers"] != line - 2 or not isinstance(data["state"], str)
                or not isinstance(data["sig"], str) or not _HEX128.fullmatch(data["sig"])):
            raise StateError(f"audit log checkpoint at line {line} is malformed")
        if self._public is None:
            raise StateError(f"audit log checkpoint at line {line} cannot be checked without the state's key"
                             " (use 'pprm audit verify DIR')")
        if data["state"] != self._public.name:
            raise StateError(f"audit log checkpoint at line {line} is for state {data['state']!r}")
        msg = _signed_message(_CHECKPOINT_TAG, data["state"], line - 2, str(entry["prev"]))
        try:
            self._public.verify(msg, bytes.fromhex(data["sig"]))
        except AuthenticationError:
            raise StateError(f"audit log checkpoint at line {line} has a bad signature") from None

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

        Args:
            event: short event name, e.g. ``answer`` (not ``checkpoint``).
            **data: scalar fields (str, int, bool, None).

        Returns:
            The entry as written.

        Raises:
            StateError: a forbidden or non-scalar field, a damaged log, or a
                log that does not end at its signed head.
        """
        if event == CHECKPOINT:
            raise StateError("audit event name 'checkpoint' is reserved")
        bad = _FORBIDDEN.intersection(data)
        if bad:
            raise StateError(f"audit entries may not carry {sorted(bad)[0]!r}")
        if any(not isinstance(v, _SCALARS) or isinstance(v, float) for v in data.values()):
            raise StateError("audit fields must be strings, integers, booleans or null")
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
        if head is not None and head != (seq - 1, prev):
            # A crash between writing lines and re-signing the head leaves a
            # short, chain-valid tail; check() has verified it. Say so in the
            # log before signing over it, so an auditor sees where it was.
            rep = self.check()
            if not rep.unsigned:
                raise StateError("audit log does not end at its signed head; run 'pprm audit verify'")
            written.append(self._entry(seq, prev, RESUMED, {"unsigned_from": head[0] + 2, "unsigned_to": seq}))
            seq, prev = seq + 1, written[-1]["hash"]
        state, signer = self._public.name, self._signer
        entry = self._entry(seq, prev, event, data)
        written.append(entry)
        if head is None or (seq + 2) % CHECKPOINT_EVERY == 0:
            sig = signer(_signed_message(_CHECKPOINT_TAG, state, seq, entry["hash"]))
            written.append(self._entry(seq + 1, entry["hash"], CHECKPOINT,
                                       {"state": state, "covers": seq, "sig": sig.hex()}))
        self._write(written)
        last = written[-1]
        sig = signer(_signed_message(_HEAD_TAG, state, last["seq"], last["hash"]))
        head_blob = canonical.encode({"state": state, "seq": last["seq"], "hash": last["hash"], "sig": sig.hex()})
        atomic_write_bytes(self.head_path, head_blob + b"\n", 0o600)
        return entry

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
        """Check the chain, every checkpoint, and the signed head.

        Returns:
            Line count, checkpoint count and the head's seq.

        Raises:
            StateError: one line naming the first line (or the head) that fails.
        """
        head = self._read_head()
        prev = GENESIS
        n = checkpoints = last_checkpoint = 0
        at_head: str | None = None
        if os.path.exists(self.path):
            with open(self.path, "rb") as fh:
                for n, line in enumerate(fh, start=1):
                    try:
                        entry = canonical.decode(line.rstrip(b"\n"), "audit line")
                        claimed = entry.pop("hash")
                    except (ValueError, KeyError):
                        raise StateError(f"audit log line {n} is damaged") from None
                    if entry.get("seq") != n - 1 or entry.get("prev") != prev or _hash(entry) != claimed:
                        raise StateError(f"audit log chain breaks at line {n}")
                    if entry.get("event") == CHECKPOINT:
                        self._check_checkpoint(entry, n)
                        checkpoints += 1
                        if head is None or n <= head[0] + 1:
                            last_checkpoint = n
                    if head is not None and n - 1 == head[0]:
                        at_head = claimed
                    prev = claimed
        if head is None:
            if checkpoints:
                raise StateError(f"audit log has signed checkpoints but its signed head {self._head_name} is"
                                 f" missing: lines after line {last_checkpoint} may have been deleted")
            return AuditReport(n, 0, None)
        head_line = head[0] + 1
        if n < head_line:
            where = f"ends at line {n}" if n else "is empty"
            raise StateError(f"audit log {where} but the signed head is at line {head_line}: lines deleted")
        if at_head != head[1]:
            since = f" after line {last_checkpoint}" if last_checkpoint else ""
            raise StateError(f"audit log line {head_line} does not match the signed head:"
                             f" the log was rewritten{since}")
        if n > head_line + CRASH_WINDOW:
            tail = f"lines {head_line + 1}-{n} are"
            raise StateError(f"audit log continues past the signed head at line {head_line}: {tail} unsigned")
        # Up to CRASH_WINDOW chain-valid lines past the head: what an
        # interrupted append leaves. Reported, and flagged in the log by a
        # "resumed" entry at the next append.
        return AuditReport(n, checkpoints, head[0], n - head_line)

    def verify(self) -> int:
        """Check the log as :meth:`check` does.

        Returns:
            The number of lines (entries and checkpoints).

        Raises:
            StateError: naming the first line where the log fails.
        """
        return self.check().entries
