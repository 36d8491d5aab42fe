"""The ``keys`` verb: this state's blind-profile key pairs as a requester.

``pprm keys list DIR`` shows each key pair (one per peer and case): its id,
peer, case, creation and expiry, whether the peer has confirmed it (answered
a query under it), whether it is live, expired or retired, and the queries
still waiting for an answer under it. It changes nothing.

``pprm keys abandon DIR --peer P [--case C]`` (or ``KEY_ID``) retires key
pairs a peer does not know, typically because their announcement was lost
on the way: the secret keys are deleted, and the next query to that peer
and case makes a new key and carries its announcement. Queries still
waiting under a retired key can no longer be opened (their answers, if any
come, are refused by ``pprm open``); query again. See
:meth:`pprm.node.requester.Requester.abandon_keys`, which also says why the
recovery is a fresh key and never the same announcement sent again.

With ``--json`` they print one object tagged ``"format": "pprm.keys.list/1"``
and ``"pprm.keys.abandon/1"`` (docs/JSON.md).
"""

from __future__ import annotations

import argparse
import functools
import time
from datetime import UTC, datetime
from typing import Any

from pprm.cli.common import EXIT_OK, AddVerb, Verbs, emit
from pprm.cli.report import format_tag
from pprm.node.requester import ABANDONED, BlindKeyStatus, Requester
from pprm.node.state import State

__all__ = ["VERBS", "FORMAT", "ABANDON_FORMAT"]

FORMAT = format_tag("keys", "list")
ABANDON_FORMAT = format_tag("keys", "abandon")


def _when(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _filters(args: argparse.Namespace) -> str:
    named = [f"--peer {args.peer}" if args.peer else "", f"--case {args.case}" if args.case else ""]
    return " ".join(n for n in named if n)


def _announced(k: BlindKeyStatus) -> str:
    if k.confirmed:
        return "confirmed"
    return f"sent with {k.announced_with}" if k.announced_with else "sent"


def _lines(keys: list[BlindKeyStatus], now: float) -> list[str]:
    lines = []
    for k in keys:
        status = k.status(now)
        if k.retired is not None:
            status += f" ({k.retired})"
        lines += [f"{k.key_id}  {k.peer}  case {k.case}",
                  f"  created {_when(k.created)}, expires {_when(k.expires)}",
                  f"  announcement: {_announced(k)}",
                  f"  status: {status}"]
        if k.pending:
            cannot = ", which can no longer be opened" if k.retired is not None else ""
            lines.append(f"  pending queries{cannot}: {', '.join(k.pending)}")
    return lines


def _cmd_list(args: argparse.Namespace) -> int:
    st = State.open(args.dir)
    now = time.time()
    keys = Requester(st).blind_keys(peer=args.peer, case=args.case, now=now)
    if keys:
        text = "\n".join([f"blind key pairs of {st.config.name} ({len(keys)}):", *_lines(keys, now)])
    else:
        which = f" matching {_filters(args)}" if _filters(args) else ""
        text = f"no blind key pairs{which} (a blind query makes one per peer and case)"
    emit(args, {"state": st.config.name, "keys": [k.to_json(now) for k in keys]}, text)
    return EXIT_OK


def _cmd_abandon(args: argparse.Namespace) -> int:
    st = State.open(args.dir)
    now = time.time()
    gone = Requester(st).abandon_keys(args.key_id, peer=args.peer, case=args.case, reason=ABANDONED, now=now)
    report: dict[str, Any] = {"state": st.config.name, "abandoned": [k.to_json(now) for k in gone]}
    if not gone:
        what = f"blind key {args.key_id} was" if args.key_id else f"every blind key matching {_filters(args)} was"
        text = (f"nothing to abandon: {what} already retired, or there is none (the next blind query to that "
                "peer and case makes and announces a new key)")
    else:
        lines = [f"abandoned {len(gone)} blind key pair(s): the next query to each peer and case makes a new key "
                 "and carries its announcement"]
        for k in gone:
            lines.append(f"  {k.key_id}  {k.peer}  case {k.case}")
            if k.pending:
                lines.append(f"    its pending queries can no longer be opened; query again: {', '.join(k.pending)}")
        text = "\n".join(lines)
    emit(args, report, text)
    return EXIT_OK


def _check_abandon(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.key_id is not None and (args.peer is not None or args.case is not None):
        p.error("give KEY_ID, or --peer and/or --case, not both")
    if args.key_id is None and args.peer is None and args.case is None:
        p.error("give KEY_ID, or --peer and/or --case")


def _add_keys(verbs: Verbs) -> None:
    keys = verbs.group("keys", "list or abandon this state's blind-profile key pairs (as a requester)",
                       dest="keys_verb", metavar="ACTION")
    p = keys.add("list", _cmd_list, "list the key pairs: id, peer, case, created, expires, whether the peer "
                                    "confirmed the announcement, status, and the queries waiting under each")
    p.add_argument("dir")
    p.add_argument("--peer", default=None, help="only the keys serving this peer")
    p.add_argument("--case", default=None, help="only the keys serving this case")
    p = keys.add("abandon", _cmd_abandon, "retire key pairs a peer does not know (a lost announcement): their "
                                          "secret keys are deleted, their pending queries can no longer be "
                                          "opened, and the next query to that peer and case announces a new key")
    p.add_argument("dir")
    p.add_argument("key_id", nargs="?", default=None, metavar="KEY_ID", help="one key, as pprm keys list shows it")
    p.add_argument("--peer", default=None, help="every key serving this peer (with --case: that case only)")
    p.add_argument("--case", default=None, help="every key serving this case")
    p.set_defaults(check=functools.partial(_check_abandon, p))


# Verb name -> the function adding it; pprm.cli.main chooses the order.
VERBS: dict[str, AddVerb] = {"keys": _add_keys}
