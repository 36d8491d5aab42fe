"""``pprm prepare DIR``: build the blind database now, not inside the first blind answer.

Blind queries are answered from the gallery laid out as diagonals (the blind
database, :mod:`pprm.matching.diagonals`): 12.8 s to build at 2,000
templates, 52 s at 100,000. Without this verb the build happens inside the
first ``pprm answer`` (or the first blind query ``pprm serve`` gets) after
every gallery change. ``prepare`` builds it ahead of time, with a progress
bar on a terminal, and does nothing when it is current. For a split state
the database lives in the key service, which builds it and keeps it in
memory; the bar then shows only the start and the end.
"""

from __future__ import annotations

import argparse

from pprm.cli.common import EXIT_OK, AddVerb, Verbs, emit
from pprm.cli.keyservice_cmds import add_key_service_arg
from pprm.cli.progress import ProgressBar
from pprm.node.keyservice import KeyService
from pprm.node.remote_keys import remote_key_service
from pprm.node.state import State

__all__ = ["VERBS"]


def _cmd_prepare(args: argparse.Namespace) -> int:
    st = State.open(args.dir)
    remote = remote_key_service(st, args.key_service)
    with ProgressBar("building the blind database", unit="templates") as bar:
        if remote is not None:
            done = remote.prepare(progress=bar.callback)
        else:
            ks = KeyService(st)
            done = st.blind_store.prepare(st.lock, lambda: st.gallery().version, ks.export_templates,
                                          progress=bar.callback)
    where = f"in its key service ({remote.address})" if remote is not None else f"in {st.path('private', 'blind-db')}"
    size = f"{done.templates} template(s), {done.blocks} block(s)"
    if done.built:
        reused = f", {done.reused} of them unchanged and kept" if done.reused else ""
        text = (f"blind database of {st.config.name} built for gallery version {done.version[:12]} ({size}{reused}) "
                f"in {done.seconds:.1f} s, {where}")
    else:
        text = (f"blind database of {st.config.name} is current for gallery version {done.version[:12]} ({size}), "
                f"{where}; nothing to do")
    emit(args, {"state": st.config.name, **done.to_json(),
                "key_service": remote.address if remote is not None else None}, text)
    return EXIT_OK


def _add_prepare(verbs: Verbs) -> None:
    p = verbs.add("prepare", _cmd_prepare, "build the blind database now (after a gallery change), "
                  "not inside the first blind answer")
    p.add_argument("dir")
    add_key_service_arg(p)


VERBS: dict[str, AddVerb] = {"prepare": _add_prepare}
