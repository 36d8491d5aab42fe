"""Which workers hold which gallery blocks: rendezvous (highest-random-weight) hashing.

Every (worker, block) pair gets a pseudo-random weight from SHA-256; a block
lives on the ``replicas`` workers with the highest weights. Adding a worker
moves only the blocks it now wins, about 1/(n+1) of them, and removing one
moves only the blocks it held; no other block changes hands. Workers are
named by their stable names (a restarted worker keeps its name), not by
their network addresses.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from pprm.errors import ParameterError

__all__ = ["owners", "plan", "moves"]


def _weight(salt: str, worker: str, block: int) -> int:
    digest = hashlib.sha256(f"{salt}\x00{worker}\x00{block}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def owners(block: int, workers: Iterable[str], replicas: int, salt: str = "") -> list[str]:
    """The workers that hold ``block``, best first.

    Args:
        block: the block's position in the gallery.
        workers: worker names.
        replicas: copies wanted (capped at the number of workers).
        salt: per-gallery salt (the CKKS key id), so two galleries spread differently.

    Raises:
        ParameterError: no workers, or replicas < 1.
    """
    names = sorted(set(workers))
    if not names:
        raise ParameterError("no workers to place gallery blocks on")
    if replicas < 1:
        raise ParameterError("replicas must be at least 1")
    ranked = sorted(names, key=lambda w: (_weight(salt, w, block), w), reverse=True)
    return ranked[:replicas]


def plan(blocks: int, workers: Sequence[str], replicas: int, salt: str = "") -> dict[int, list[str]]:
    """Block -> its owners, for blocks ``0 .. blocks-1``."""
    return {b: owners(b, workers, replicas, salt) for b in range(blocks)}


def moves(before: dict[int, list[str]], after: dict[int, list[str]]) -> dict[int, tuple[set[str], set[str]]]:
    """Per block whose owners changed: (workers that gain it, workers that lose it)."""
    out = {}
    for b in sorted(set(before) | set(after)):
        old, new = set(before.get(b, [])), set(after.get(b, []))
        if old != new:
            out[b] = (new - old, old - new)
    return out
