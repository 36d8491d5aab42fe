"""``pprm keyservice split|join|serve``: run a state's secret keys in their own process.

``split DIR KEYDIR`` moves the CKKS secret key, the token key and the blind
profile's database out of DIR (:mod:`pprm.node.split`); ``serve KEYDIR``
runs the key service (:mod:`pprm.node.keyservice_host`); every verb that
needs a secret (``enroll``, ``remove``, ``answer``, ``resolve``, ``serve``)
then reaches it at the address recorded in DIR, or at ``--key-service ADDR``.
``join DIR KEYDIR`` undoes the split.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType

from pprm.cli.common import EXIT_OK, AddVerb, Verbs, emit

__all__ = ["VERBS"]


def _cmd_split(args: argparse.Namespace) -> int:
    from pprm.node.split import split

    pin = split(args.dir, args.keydir, address=args.listen)
    emit(args, {"dir": os.path.abspath(args.dir), "keydir": os.path.abspath(args.keydir), "address": pin.address,
                "keyservice": pin.keyservice.fingerprint.hex()},
         f"secret keys of {args.dir} moved to {args.keydir}; start the key service with "
         f"'pprm keyservice serve {args.keydir}' (it listens on {pin.address})")
    return EXIT_OK


def _cmd_join(args: argparse.Namespace) -> int:
    from pprm.node.split import join

    join(args.dir, args.keydir)
    emit(args, {"dir": os.path.abspath(args.dir), "keydir": os.path.abspath(args.keydir), "joined": True},
         f"secret keys are back in {args.dir}; {args.keydir} is gone (its audit log is kept in DIR)")
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from pprm.node.keyservice_host import serve

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    stop = threading.Event()

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    serve(args.keydir, args.listen, ready=lambda addr: print(f"pprm keyservice listening on {addr}", flush=True),
          stop=stop.is_set)
    return EXIT_OK


def _add_keyservice(verbs: Verbs) -> None:
    ks = verbs.group("keyservice", "run a state's secret keys in their own process (split, serve, join)",
                     dest="keyservice_verb", metavar="ACTION")
    p = ks.add("split", _cmd_split, "move the secret keys and the blind database from DIR into KEYDIR")
    p.add_argument("dir")
    p.add_argument("keydir")
    p.add_argument("--listen", default=None, metavar="ADDR",
                   help="where the key service will listen, recorded in DIR (default KEYDIR/keyservice.sock)")
    p = ks.add("join", _cmd_join, "bring the secret keys back from KEYDIR into DIR (the key service must be stopped)")
    p.add_argument("dir")
    p.add_argument("keydir")
    p = ks.add("serve", _cmd_serve, "run the key service of KEYDIR until SIGTERM or Ctrl-C", json_out=False)
    p.add_argument("keydir")
    p.add_argument("--listen", default=None, metavar="ADDR",
                   help="unix socket path (default KEYDIR/keyservice.sock) or loopback HOST:PORT")
    p.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="warning",
                   help="log level; info logs every refused request (default warning)")


def add_key_service_arg(p: argparse.ArgumentParser) -> None:
    """The ``--key-service ADDR`` option of the verbs that need a split state's secrets."""
    p.add_argument("--key-service", default=None, metavar="ADDR",
                   help="a split state's key service (default: the address recorded at 'pprm keyservice split')")


VERBS: dict[str, AddVerb] = {"keyservice": _add_keyservice}
