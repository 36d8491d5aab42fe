"""The verbs over the network: ``serve``, ``route``, ``ask``, and ``follow-up`` sent over HTTP.

The HTTP stack (:mod:`pprm.net`, starlette, uvicorn, httpx) is imported only
when one of these runs, so the other verbs do not pay for it at start-up.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from pprm.cli import report
from pprm.cli.common import (
    EXIT_OK,
    EXIT_PARTIAL,
    AddVerb,
    Verbs,
    emit,
    load_npy,
    seconds_up_to,
    state_codes,
)
from pprm.cli.keyservice_cmds import add_key_service_arg
from pprm.errors import ParameterError

__all__ = ["VERBS", "send_follow_up_cmd"]

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _directory(args: argparse.Namespace) -> Any:
    from pprm.net.directory import Directory, load_peers

    if args.peers is None and args.router is None:
        raise ParameterError("say where the peers are: --peers FILE and/or --router URL")
    return Directory(load_peers(args.peers) if args.peers else {}, args.router)


def _announce(host: str, what: str, url: str) -> None:
    from pprm.net.server import is_loopback

    print(f"pprm {what} listening on {url}", flush=True)
    if not is_loopback(host):
        print(f"pprm {what}: warning: bound to {host}, not loopback; put TLS and access control in front",
              file=sys.stderr, flush=True)


def _cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from pprm.matching.gallery import GALLERY_MEMORY_ENV, gallery_memory
    from pprm.net.server import bind, run
    from pprm.net.service import create_app

    if args.gallery_memory:
        os.environ[GALLERY_MEMORY_ENV] = args.gallery_memory  # cluster workers started from here inherit it
    app = create_app(args.dir, cluster=args.cluster, replicas=args.replicas, key_service=args.key_service)
    name = app.state.service.name
    if gallery_memory() == "resident" and not args.cluster:
        from pprm.node.state import State

        print(f"pprm serve: {name}: reading the sealed gallery into memory", flush=True)
        State.open(args.dir).gallery().preload()
    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    run(app, sock, log_level=args.log_level, started=lambda: _announce(args.host, f"serve: {name}", url))
    return EXIT_OK


def _cmd_route(args: argparse.Namespace) -> int:
    import logging

    from pprm.net.directory import load_peers
    from pprm.net.router import create_router_app
    from pprm.net.server import bind, run

    peers = load_peers(args.peers)
    app = create_router_app(peers)
    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{host}:{port}"
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    run(app, sock, log_level=args.log_level,
        started=lambda: _announce(args.host, f"route: {len(peers)} state(s)", url))
    return EXIT_OK


def _cmd_ask(args: argparse.Namespace) -> int:
    from pprm.net.ask import ask
    from pprm.node.state import State

    st = State.open(args.dir)
    directory = _directory(args)
    if args.probes is not None:
        from pprm.net.ask import ask_many

        probes = load_npy(args.probes, "probes")
        outcomes = ask_many(st, probes, args.to, case=args.case, purpose=args.purpose, directory=directory,
                            timeout=args.timeout, answers_dir=args.answers)
    else:
        probe = load_npy(args.probe, "probe")
        outcomes = ask(st, probe, args.to, case=args.case, purpose=args.purpose, directory=directory,
                       timeout=args.timeout, answers_dir=args.answers)
    lines = []
    width = max(len(o.peer) for o in outcomes)
    rows = max(len(str(o.probe)) for o in outcomes)
    for o in outcomes:
        line = f"{o.peer:<{width}}  {o.status:<11} {o.seconds:6.2f} s"
        if o.probe is not None:  # a batch: one line per (probe, peer), rows from 0
            line = f"probe {o.probe:<{rows}}  {line}"
        if o.answer_path is not None:  # what pprm follow-up takes
            line += f"  answer {o.answer_path}"
        if o.detail:
            line += f"  ({o.detail})"
        lines.append(line)
        lines += [f"    [{n}] {tok}" for n, tok in enumerate(o.candidates, start=1)]
    outcomes_json = [o.to_json() for o in outcomes]
    body = {"state": st.config.name, "outcomes": outcomes_json}
    unanswered = [o for o in outcomes if o.status not in ("hit", "no hit", "refused")]
    if not unanswered:
        emit(args, body, "\n".join(lines))
        return EXIT_OK
    # Exit 4 is no error line: the report says, per peer, what happened.
    first = unanswered[0]
    error = (report.PARTIAL, f"{len(unanswered)} of {len(outcomes)} asks not answered to the end (first: "
                             f"{first.peer}{'' if first.probe is None else f' probe {first.probe}'}: {first.status})")
    emit(args, body, "\n".join(lines), ok=False, error=error)
    return EXIT_PARTIAL


def send_follow_up_cmd(args: argparse.Namespace, st: Any, answer: bytes, token: str, index: int | None) -> int:
    """``pprm follow-up ... --peers/--router``: build the follow-up and post it to the peer.

    Args:
        args: the parsed ``follow-up`` arguments.
        st: the requesting state (:class:`pprm.node.state.State`).
        answer: the answer message the token is taken from.
        token: the candidate's token or handle.
        index: its number among the answer's candidates (from 1), when
            given as ``--candidate N``.

    Returns:
        :data:`~pprm.cli.common.EXIT_OK` once the peer accepted the follow-up.

    Raises:
        PprmError: the answer or token is refused locally, or the peer refused
            or could not be reached.
    """
    from pprm.net.ask import send_follow_up
    from pprm.protocol.envelope import open_envelope

    ack = send_follow_up(st, answer, token, _directory(args))
    roster = st.roster()
    # The answer verified a moment ago; its signed header names the peer and the profile.
    header = open_envelope(answer, lookup=st.lookup, me=st.config.name,
                           params_digest=lambda sender: roster[sender].params_digest,
                           blind_digest=st.config.blind_parameter_set.digest).header
    emit(args, {"state": st.config.name, "peer": header.sender, "profile": header.profile,
                "query_id": ack.get("query_id"), "followup_id": ack.get("followup_id"), "candidate": token,
                "index": index, "out": None, "sent": True, "status": ack.get("status")},
         f"follow-up {ack.get('followup_id')} for query {ack.get('query_id')} accepted: the peer "
         "resolved and logged it; the record follows through its step two")
    return EXIT_OK


def _add_serve(verbs: Verbs) -> None:
    p = verbs.add("serve", _cmd_serve, "run this state as an HTTP service (loopback by default)", json_out=False)
    p.add_argument("dir")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8470, help="port (default 8470; 0 picks a free one)")
    p.add_argument("--log-level", choices=_LOG_LEVELS, default="warning",
                   help="log level; info logs every request and query (default warning)")
    p.add_argument("--cluster", default=None, metavar="ADDRESS",
                   help="shard the gallery (sealed ciphertexts, blind database) over a Dask cluster: "
                   "tcp://HOST:PORT, or local:N worker processes")
    p.add_argument("--replicas", type=int, default=1, help="copies of each gallery block on the cluster (default 1)")
    p.add_argument("--gallery-memory", choices=("mapped", "resident"), default=None,
                   help="sealed gallery blocks memory-mapped (default) or read into this process's memory "
                   "before serving (faster queries, slower start; sets PPRM_GALLERY_MEMORY)")
    add_key_service_arg(p)


def _add_route(verbs: Verbs) -> None:
    p = verbs.add("route", _cmd_route, "relay signed messages between state services (holds no state keys)",
                  json_out=False)
    p.add_argument("--peers", required=True, help="JSON file: state code -> service URL")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8460, help="port (default 8460; 0 picks a free one)")
    p.add_argument("--log-level", choices=_LOG_LEVELS, default="warning", help="log level (default warning)")


def _add_ask(verbs: Verbs) -> None:
    p = verbs.add("ask", _cmd_ask, "query several peers over HTTP at once and report per peer (per probe and "
                                   "peer with --probes)")
    p.add_argument("dir")
    probe = p.add_mutually_exclusive_group(required=True)
    probe.add_argument("--probe", default=None, help=".npy template of shape (dim,) or (1, dim)")
    probe.add_argument("--probes", default=None, metavar="FILE",
                       help=".npy array of shape (N, dim): ask every peer with every row, one query each, and "
                            "report one line (JSON item, with \"probe\") per probe and peer, rows from 0; blind: "
                            "probe 0 is asked first (it carries the batch's key), the others once it was answered")
    p.add_argument("--to", required=True, type=state_codes, help="peers' state codes, comma-separated (DE,HU)")
    p.add_argument("--case", required=True, help="case reference")
    p.add_argument("--purpose", required=True, help="purpose (one of the state's configured purposes)")
    p.add_argument("--peers", default=None, help="JSON file: state code -> service URL")
    p.add_argument("--router", default=None, help="router URL, for peers not in --peers")
    p.add_argument("--timeout", type=seconds_up_to(3600), default=60.0, help="seconds allowed per peer (default 60)")
    p.add_argument("--answers", default=None, help="directory for the signed replies (default DIR/answers)")


# Verb name -> the function adding it; pprm.cli.main chooses the order.
VERBS: dict[str, AddVerb] = {"serve": _add_serve, "route": _add_route, "ask": _add_ask}
