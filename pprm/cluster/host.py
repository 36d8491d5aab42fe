"""The process a shard runs in: its Dask worker, its scratch space, and an audit for secrets."""

from __future__ import annotations

import gc
import types

import tenseal.sealapi as seal

__all__ = ["worker", "local_directory", "secret_objects"]


def secret_objects(*roots: object) -> list[str]:
    """Type names of SEAL secret-key objects reachable from ``roots`` (for tests and audits).

    The walk follows instances and containers (``gc.get_referents``), not
    classes, modules or functions, which lead to the whole interpreter.
    SEAL's objects are not tracked by Python's collector, so a walk from the
    objects that could hold them is the way to find them.
    """
    kinds = (seal.SecretKey, seal.Decryptor, seal.KeyGenerator)
    stop = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.CodeType)
    seen: set[int] = set()
    stack = list(roots)
    found = []
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, kinds):
            found.append(type(obj).__name__)
        if not isinstance(obj, stop):
            stack.extend(gc.get_referents(obj))
    return sorted(found)


def worker() -> object:
    """The Dask worker hosting this process's actors, or None outside a worker."""
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def local_directory() -> str | None:
    """The Dask worker's scratch directory, or None outside a worker."""
    host = worker()
    return None if host is None else str(host.local_directory)  # type: ignore[attr-defined]
