"""Helpers for the cluster tests: spreading blocks, and killing a worker mid-query."""

from __future__ import annotations

import os
import signal

from pprm.cluster import plan
from pprm.cluster.shards import ShardSet

__all__ = ["kill_after_dispatch", "spread_salt"]


def spread_salt(blocks: int, workers: tuple[str, ...] = ("0", "1"), prefix: str = "s") -> str:
    """A placement salt under which every worker is primary for some block (few blocks can all land on one)."""
    return next(f"{prefix}{i}" for i in range(1000)
                if len({o[0] for o in plan(blocks, list(workers), 1, f"{prefix}{i}").values()}) == len(workers))


def kill_after_dispatch(monkeypatch, pids: dict[str, int], method: str) -> list[str]:
    """Wrap ShardSet.call: SIGKILL the first worker a ``method`` call goes to, right after it was sent.

    Returns:
        A list that receives the victim's name.
    """
    original = ShardSet.call
    victim: list[str] = []

    def call(self, worker, name, *args):
        fut = original(self, worker, name, *args)
        if name == method and not victim:
            os.kill(pids[worker], signal.SIGKILL)
            victim.append(worker)
        return fut

    monkeypatch.setattr(ShardSet, "call", call)
    return victim
