"""Connecting to a Dask cluster: an existing scheduler, or a local one for tests and benchmarks.

``tcp://host:8786`` connects to a running scheduler (``dask scheduler`` and
``dask worker`` on the machines). ``local:N`` starts N worker processes on
this machine, each with one Dask thread and ``cores / N`` kernel threads, so
that N workers do not oversubscribe the cores a single process would use.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from pprm.errors import ClusterError, ParameterError

__all__ = ["ClusterHandle", "connect"]

_LOCAL = re.compile(r"local:([1-9][0-9]?)")
# Seconds to wait for the scheduler and for the first workers.
CONNECT_TIMEOUT = 30.0


@dataclass
class ClusterHandle:
    """A Dask client, and the local cluster it owns (None for a remote one)."""

    # distributed ships no type information: Client and LocalCluster stay Any.
    client: Any
    local: Any = None
    address: str = ""

    def workers(self) -> dict[str, str]:
        """Live workers: name -> address."""
        info = self.client.scheduler_info(n_workers=-1)["workers"]
        return {str(w.get("name", addr)): addr for addr, w in info.items()}

    def close(self) -> None:
        """Close the client, and the local cluster if this handle started it."""
        self.client.close()
        if self.local is not None:
            self.local.close()

    def __enter__(self) -> ClusterHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(address: str, *, timeout: float = CONNECT_TIMEOUT) -> ClusterHandle:
    """Connect to ``address`` (``tcp://...``) or start ``local:N``.

    Raises:
        ParameterError: a malformed address.
        ClusterError: the scheduler cannot be reached, or the extra is missing.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ClusterError('the cluster needs Dask: pip install "pprm[cluster]"') from None
    m = _LOCAL.fullmatch(address)
    if m:
        n = int(m.group(1))
        threads = max(1, (os.cpu_count() or 1) // n)
        local = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                             env={"PPRM_THREADS": str(threads)}, silence_logs=40)
        client = Client(local, timeout=timeout)
        client.wait_for_workers(n, timeout=timeout)
        return ClusterHandle(client, local, address)
    if not address.startswith(("tcp://", "tls://")):
        raise ParameterError(f"a cluster address is tcp://HOST:PORT, tls://HOST:PORT or local:N, not {address!r}")
    try:
        client = Client(address, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    return ClusterHandle(client, None, address)
