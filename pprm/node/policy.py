"""A responder's query policy: allowed purposes and per-requester quotas.

The policy is decided after a query has been verified (signature, box,
body) and before any matching. A refused query is answered with a signed
refusal (:class:`pprm.protocol.messages.RefusalBody`) instead of an answer.

Quotas are counted in ``DIR/quota.json``::

    {"DE": [[1700000000, "C-2026-17"], ...], ...}

one ``[time, case]`` pair per *answered* query of each requesting state over
the last :data:`pprm.node.config.QUOTA_WINDOW` seconds; older pairs are
dropped on every write. A small file of its own rather than a scan of the
audit log: checking a quota stays O(queries in a day) whatever the size of
the log, and the responder's clock override (``now``) applies to it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pprm._fs import atomic_write_json, read_json
from pprm.errors import StateError
from pprm.node.config import QUOTA_WINDOW, StateConfig
from pprm.protocol.messages import MAX_REFUSAL_MESSAGE

__all__ = ["Refusal", "QuotaLedger", "decide"]


@dataclass(frozen=True)
class Refusal:
    """Why a query is refused: a reason code (on the wire) and one line for people."""

    reason: str
    message: str


class QuotaLedger:
    """The answered queries of the last 24 hours, per requesting state.

    Args:
        path: the JSON file; callers hold the state lock around check-and-record.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"QuotaLedger({self.path!r})"

    def _load(self) -> dict[str, list[tuple[int, str]]]:
        if not os.path.exists(self.path):
            return {}
        try:
            data = read_json(self.path)
            if not isinstance(data, dict):
                raise TypeError
            out: dict[str, list[tuple[int, str]]] = {}
            for peer, rows in data.items():
                entries = []
                for when, case in rows:
                    if type(when) is not int or not isinstance(case, str):
                        raise TypeError
                    entries.append((when, case))
                out[str(peer)] = entries
            return out
        except (ValueError, TypeError, AttributeError):
            raise StateError("quota.json is corrupt") from None

    def usage(self, peer: str, case: str, now: float) -> tuple[int, int]:
        """``(queries for this case, queries in all)`` answered for ``peer`` in the window."""
        live = [c for when, c in self._load().get(peer, []) if when > now - QUOTA_WINDOW]
        return sum(c == case for c in live), len(live)

    def record(self, peer: str, case: str, now: float) -> None:
        """Count one answered query, and drop what has left the window (caller holds the lock)."""
        data = self._load()
        data.setdefault(peer, []).append((int(now), case))
        horizon = now - QUOTA_WINDOW
        kept = {p: [[w, c] for w, c in rows if w > horizon] for p, rows in data.items()}
        # Case references are personal data, as in the audit log: owner-only.
        atomic_write_json(self.path, {p: rows for p, rows in kept.items() if rows}, mode=0o600)


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
