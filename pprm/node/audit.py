"""Append-only, hash-chained audit log (DESIGN.md section 7).

Each line is canonical JSON ``{seq, time, event, data, prev, hash}`` where
``hash = SHA-256(prev | canonical entry without hash)``. Editing, deleting or
reordering any line breaks the chain at that line, which :meth:`AuditLog.verify`
reports. Templates, probes and scores never enter it: :meth:`AuditLog.append`
refuses fields that could carry them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

from pprm.errors import StateError
from pprm.protocol import canonical

__all__ = ["AuditLog", "GENESIS"]

GENESIS = "0" * 64
# Field names that would carry biometric data or scores are refused outright.
_FORBIDDEN = {"probe", "template", "templates", "score", "scores", "embedding", "values"}
_SCALARS = (str, int, bool, type(None))


def _hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(b"pprm/audit/v1\x00" + canonical.encode(entry)).hexdigest()


class AuditLog:
    """The log file of one state.

    Args:
        path: the log file (created on first append).
    """

    def __init__(self, path: str) -> None:
        self.path = path

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

    def append(self, event: str, **data: Any) -> dict[str, Any]:
        """Append one entry (callers hold the state lock).

        Args:
            event: short event name, e.g. ``answer``.
            **data: scalar fields (str, int, bool, None).

        Returns:
            The entry as written.

        Raises:
            StateError: a forbidden or non-scalar field.
        """
        bad = _FORBIDDEN.intersection(data)
        if bad:
            raise StateError(f"audit entries may not carry {sorted(bad)[0]!r}")
        if any(not isinstance(v, _SCALARS) or isinstance(v, float) for v in data.values()):
            raise StateError("audit fields must be strings, integers, booleans or null")
        seq, prev = self._tail()
        entry: dict[str, Any] = {"seq": seq, "time": int(time.time()), "event": event,
                                 "data": data, "prev": prev}
        entry["hash"] = _hash(entry)
        line = canonical.encode(entry) + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        return entry

    def entries(self) -> list[dict[str, Any]]:
        """All entries, parsed (not verified)."""
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
                out.append(entry)
        return out

    def verify(self) -> int:
        """Check the whole chain.

        Returns:
            The number of entries.

        Raises:
            StateError: naming the first line where the chain breaks.
        """
        if not os.path.exists(self.path):
            return 0
        prev = GENESIS
        n = 0
        with open(self.path, "rb") as fh:
            for n, line in enumerate(fh, start=1):
                try:
                    entry = canonical.decode(line.rstrip(b"\n"), "audit line")
                    claimed = entry.pop("hash")
                except (ValueError, KeyError):
                    raise StateError(f"audit log line {n} is damaged") from None
                if entry.get("seq") != n - 1 or entry.get("prev") != prev or _hash(entry) != claimed:
                    raise StateError(f"audit log chain breaks at line {n}")
                prev = claimed
        return n
