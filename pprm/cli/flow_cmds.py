"""The verbs of one search between two states: ``query``, ``answer``, ``open``, ``follow-up``, ``resolve``.

Messages travel as files the operators exchange by whatever channel their
Prüm setup uses (``follow-up`` can also post over HTTP, through
:mod:`pprm.cli.net_cmds`). Every output file is written whole or not at all
(:class:`pprm.cli.common.AtomicOutput`), and before the state records the
step, so a failed write leaves the state as it was.

``resolve`` on a blind follow-up whose probe does not clear the threshold
against the record behind its handle writes the key service's signed
refusal (reason ``not-a-hit``) to ``--refusal-out`` and exits 0, as
``answer`` does with a refusal by policy; the requester opens it with
``open``, which records it and exits 1, as for a refused query.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
from collections.abc import Callable
from typing import Any

from pprm._fs import atomic_write_bytes
from pprm.cli import face_cmds, report
from pprm.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    AddVerb,
    AtomicOutput,
    Verbs,
    emit,
    int_at_least,
    load_npy,
    read_bytes,
    refuse_overwriting_inputs,
    same_file,
)
from pprm.cli.keyservice_cmds import add_key_service_arg
from pprm.cli.net_cmds import send_follow_up_cmd
from pprm.cli.progress import ProgressBar
from pprm.cli.report import ANSWER_BATCH, QUERY_BATCH
from pprm.errors import NotAHitError, ParameterError, PprmError, TokenError
from pprm.node.remote_keys import key_service_for, remote_key_service
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from pprm.node.state import State
from pprm.profile import PROFILES
from pprm.protocol.delivery import pack_delivery, split_query_file
from pprm.protocol.envelope import Header, open_envelope

__all__ = ["VERBS", "query_file_name", "pick_candidate"]


def _cmd_query(args: argparse.Namespace) -> int:
    if args.probes is not None:
        return _cmd_query_many(args)
    st = State.open(args.dir)
    probe = face_cmds.probe_from_image(args, st) if args.image is not None else load_npy(args.probe, "probe")
    req = Requester(st)
    blind = req.profile_for(args.to, args.profile) == "blind"
    # A separate announcement file only on request (the two-file flow of older pprm versions).
    keys_file = AtomicOutput(args.keys_out) if blind and args.keys_out is not None else contextlib.nullcontext(None)
    with AtomicOutput(args.out) as out, keys_file as keys_out:

        def sink(announcement: bytes | None, query: bytes) -> None:
            # Every file is complete on disk (written, fsynced) before any is
            # renamed into place, and all before the key or the query is recorded.
            if announcement is None:
                out.write(query)  # nothing travels with it: the bare message, as every pprm wrote it
            elif keys_out is None:
                out.write(pack_delivery(query, [announcement]))
            else:
                out.write(query)
                keys_out.write(announcement)
                keys_out.commit()
            out.commit()

        sent = req.prepare(args.to, probe, args.case, args.purpose, profile=args.profile, sink=sink)
    announced = sent.announcement is not None
    separate = announced and keys_out is not None
    body: dict[str, Any] = {"state": st.config.name, "peer": args.to, "profile": sent.profile,
                            "query_id": sent.query_id, "out": out.path, "key_id": sent.key_id,
                            "announced": announced, "keys": keys_out.path if separate and keys_out is not None
                            else None}
    if sent.profile == "sealed":
        emit(args, body, f"query {sent.query_id} to {args.to} written to {args.out}")
        return EXIT_OK
    text = f"blind query {sent.query_id} to {args.to} written to {args.out}"
    if separate:
        text += (f"; new key announcement written to {args.keys_out}: deliver both (pprm answer ... "
                 f"--keys {args.keys_out})")
    elif announced:
        text += " with the announcement of its new key (one file to deliver)"
    emit(args, body, text)
    return EXIT_OK


def query_file_name(row: int, count: int) -> str:
    """The file ``pprm query --probes`` writes probe ``row``'s query to: ``q-0000.msg`` onwards.

    Args:
        row: the probe's row, from 0.
        count: the number of probes (more than 10,000 widen every name alike).

    Returns:
        The file name, the same width for every row of the batch, so names sort as rows do.
    """
    return f"q-{row:0{max(4, len(str(count - 1)))}d}.msg"


def _cmd_query_many(args: argparse.Namespace) -> int:
    probes = load_npy(args.probes, "probes")
    st = State.open(args.dir)
    req = Requester(st)
    blind = req.profile_for(args.to, args.profile) == "blind"
    out_dir = os.path.abspath(args.out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ParameterError(f"--out-dir {args.out_dir} is not a directory")
    # Files of an earlier batch left beside these would read as part of this one.
    earlier = sorted(n for n in os.listdir(out_dir) if n.startswith("q-") and n.endswith(".msg")) \
        if os.path.isdir(out_dir) else []
    if earlier:
        raise ParameterError(f"{args.out_dir} already holds query files ({earlier[0]}); give a new --out-dir")
    written: dict[int, str] = {}
    keys_written: list[str] = []

    def sink(row: int, announcement: bytes | None, query: bytes) -> None:
        # Each file is whole on disk before its query (and a new key) is recorded, as for one probe;
        # the directory is made only once the batch checked out.
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, query_file_name(row, probes.shape[0]))
        with AtomicOutput(path) as out:
            if announcement is not None and args.keys_out is not None:
                with AtomicOutput(args.keys_out) as keys_out:
                    keys_out.write(announcement)
                    out.write(query)
                    keys_out.commit()
                    keys_written.append(keys_out.path)
            elif announcement is not None:
                out.write(pack_delivery(query, [announcement]))
            else:
                out.write(query)
            out.commit()
        written[row] = path

    with ProgressBar("querying", unit="probes") as bar:
        results = req.query_many(args.to, probes, args.case, args.purpose, profile=args.profile, sink=sink,
                                 progress=bar.callback)
    items: list[dict[str, Any]] = []
    lines = []
    for r in results:
        if r.query is None:
            items.append({"probe": r.row, "query_id": None, "out": None, "key_id": None, "announced": False,
                          "error": report.error_object(r.error) if r.error is not None else None})
            lines.append(f"probe {r.row}: no query: {r.error}")
            continue
        items.append({"probe": r.row, "query_id": r.query.query_id, "out": written[r.row], "key_id": r.query.key_id,
                      "announced": r.query.announcement is not None, "error": None})
        text = f"probe {r.row}: query {r.query.query_id} written to {written[r.row]}"
        if r.query.announcement is not None:
            text += (f" (its key's announcement in {keys_written[0]}: deliver it with this file)" if keys_written
                     else " with its key's announcement: deliver and answer this file first")
        lines.append(text)
    made = sum(r.ok for r in results)
    body: dict[str, Any] = {"state": st.config.name, "peer": args.to, "profile": "blind" if blind else "sealed",
                            "out_dir": out_dir, "keys": keys_written[0] if keys_written else None, "queries": items}
    lines.append(f"{made} of {len(results)} {'blind ' if blind else ''}quer{'y' if made == 1 else 'ies'} to "
                 f"{args.to} written to {args.out_dir}")
    failed = [r for r in results if r.error is not None]
    if not failed:
        emit(args, body, "\n".join(lines), fmt=QUERY_BATCH)
        return EXIT_OK
    more = f" (and {len(failed) - 1} more probe(s) without a query)" if len(failed) > 1 else ""
    first = failed[0].error
    assert first is not None  # failed lists the results with an error
    error = (report.error_code(first), f"probe {failed[0].row}: no query was made: {first}{more}")
    # One report either way: the queries made are written and recorded, the error says which were not.
    emit(args, body, "\n".join(lines), fmt=QUERY_BATCH, ok=False, error=error)
    report.error_line(error[1])
    return EXIT_ERROR


def _check_query(face_check: Callable[[argparse.Namespace], None] | None, p: argparse.ArgumentParser,
                 args: argparse.Namespace) -> None:
    refuse_overwriting_inputs(p, {"--out": args.out, "--keys-out": args.keys_out},
                              {"--probe": args.probe, "--probes": args.probes,
                               "--image": getattr(args, "image", None)})
    if args.out is not None and args.keys_out is not None and same_file(args.out, args.keys_out):
        p.error(f"--out and --keys-out name the same file {args.out}")
    if args.probes is None:
        if args.out_dir is not None:
            p.error("--out-dir goes with --probes (one file per probe); one probe is written to --out")
        if args.out is None:
            p.error("the following arguments are required: --out")
        if face_check is not None:
            face_check(args)
        return
    if args.probe is not None:
        p.error("--probe and --probes are mutually exclusive")
    if args.image is not None or args.models is not None or getattr(args, "aligned", False):
        p.error("--probes and --image/--models/--aligned are mutually exclusive")
    if args.out is not None:
        p.error("--probes writes one file per probe into --out-dir, not --out")
    if args.out_dir is None:
        p.error("--probes needs --out-dir (one query file per probe: q-0000.msg, ...)")


def _cmd_answer(args: argparse.Namespace) -> int:
    if args.queries is not None:
        return _cmd_answer_many(args)
    st = State.open(args.dir)
    # Made first: a state whose policy the audit log does not cover refuses before reading any input.
    responder = Responder(st, key_service=remote_key_service(st, args.key_service))
    query, announcements = split_query_file(read_bytes(args.query))
    for path in args.keys or []:
        extra = read_bytes(path)
        # The same announcement in the query file and in --keys (an old habit) counts once.
        if extra not in announcements:
            announcements.append(extra)
    with AtomicOutput(args.out) as out, ProgressBar("matching", unit="blocks") as bar:
        # The responder verifies the query once, before any state change; sink
        # runs before the query is marked used: if the write fails, the query
        # stays unanswered and can be answered again.
        res = responder.respond(query, sink=out.write, progress=bar.callback, announcements=announcements)
        out.commit()
    # A refusal by policy is a valid protocol outcome (signed, logged): exit 0.
    text = (f"answer to query {res.query_id} from {res.peer} written to {args.out}" if res.refused is None else
            f"refusal ({res.refused}) of query {res.query_id} from {res.peer} written to {args.out}: {res.reason}")
    if announcements:
        text += f" ({len(announcements)} key announcement(s) accepted)"
    emit(args, {"state": st.config.name, "peer": res.peer, "profile": res.profile, "query_id": res.query_id,
                "out": out.path, "refused": res.refused, "reason": res.reason,
                "announcements": len(announcements)}, text)
    return EXIT_OK


def _header(st: State, blob: bytes) -> Header | None:
    """The header of a message from a peer to ``st`` that a step just accepted (for its profile).

    The signature is checked again, as the step did: a header is only ever
    read from a message that verifies.
    """
    roster = st.roster()
    try:
        return open_envelope(blob, lookup=st.lookup, me=st.config.name,
                             params_digest=lambda sender: roster[sender].params_digest,
                             blind_digest=st.config.blind_parameter_set.digest).header
    except (PprmError, KeyError):
        return None


def _candidate_lines(candidates: tuple[str, ...] | list[str], indent: str = "  ") -> list[str]:
    """One line per candidate, with the number ``follow-up --candidate`` takes (from 1)."""
    return [f"{indent}[{n}] {tok}" for n, tok in enumerate(candidates, start=1)]


def _cmd_open(args: argparse.Namespace) -> int:
    st = State.open(args.dir)
    blob = read_bytes(args.answer)
    opened = Requester(st).open(blob)
    header = _header(st, blob)
    lines = [f"answer from {opened.sender} to query {opened.query_id}: "
             f"{'HIT' if opened.hit else 'no hit'}, {len(opened.candidates)} candidate(s)"]
    lines += _candidate_lines(opened.candidates)
    if opened.candidates:
        lines.append(f"follow one up: pprm follow-up {args.dir} {args.answer} --candidate N --out FILE")
    emit(args, {"state": st.config.name, "peer": opened.sender, "profile": header.profile if header else None,
                "query_id": opened.query_id, "hit": opened.hit, "candidates": list(opened.candidates)},
         "\n".join(lines))
    return EXIT_OK


def pick_candidate(st: State, answer: bytes, token: str | None, index: int | None) -> tuple[str, int | None]:
    """The candidate a follow-up asks for: the token given, or the ``index``-th of the answer's candidates.

    Args:
        st: the requesting state.
        answer: the answer the candidate came in.
        token: the token or handle given on the command line, or None.
        index: ``--candidate N``, from 1, as ``pprm open`` numbers them, or None.

    Returns:
        The token, and its number in the answer (None when given as a token
        that is not among the candidates; the follow-up then refuses it).

    Raises:
        TokenError: the answer has no candidate with that number.
        RefusedError, MessageError and subclasses: as ``pprm open`` (which
            this is, recording the answer when it was not opened yet).
    """
    if index is None:
        assert token is not None  # the parser requires one of them
        return token, None
    candidates = Requester(st).open(answer).candidates
    if not 1 <= index <= len(candidates):
        raise TokenError(f"--candidate {index}: the answer has {len(candidates)} candidate(s), numbered from 1")
    return candidates[index - 1], index


def _cmd_follow_up(args: argparse.Namespace) -> int:
    st = State.open(args.dir)
    blob = read_bytes(args.answer)
    if args.out is None and args.peers is None and args.router is None:
        raise ParameterError("give --out FILE, or --peers FILE / --router URL to send the follow-up")
    token, index = pick_candidate(st, blob, args.token, args.candidate)
    if args.out is None:
        return send_follow_up_cmd(args, st, blob, token, index)
    with AtomicOutput(args.out) as out:
        fu = Requester(st).prepare_follow_up(blob, token)
        out.write(fu.message)
        out.commit()
    header = _header(st, blob)
    emit(args, {"state": st.config.name, "peer": fu.peer, "profile": header.profile if header else None,
                "query_id": fu.query_id, "followup_id": fu.followup_id, "candidate": token, "index": index,
                "out": out.path, "sent": False, "status": "written"},
         f"follow-up to {fu.peer} for query {fu.query_id} written to {args.out}")
    return EXIT_OK


def _cmd_resolve(args: argparse.Namespace) -> int:
    st = State.open(args.dir)
    blob = read_bytes(args.followup)
    refusal_path = args.refusal_out or f"{args.followup}.refusal"
    refusals: list[AtomicOutput] = []
    with contextlib.ExitStack() as stack:

        def sink(refusal: bytes) -> None:
            # Only a refused follow-up has an output file; it is made here, so
            # that an unwritable place fails before the refusal is recorded.
            out = stack.enter_context(AtomicOutput(refusal_path))
            refusals.append(out)
            out.write(refusal)

        try:
            res = key_service_for(st, args.key_service).resolve(blob, sink=sink)
        except NotAHitError as exc:
            # A refusal is a valid protocol outcome (signed, logged, counted): exit 0, as answer does.
            (out,) = refusals
            out.commit()
            emit(args, {"state": st.config.name, "peer": exc.peer, "profile": "blind", "query_id": exc.query_id,
                        "followup_id": exc.followup_id, "reference": None, "refused": "not-a-hit",
                        "out": out.path},
                 f"follow-up {exc.followup_id} from {exc.peer} on query {exc.query_id} refused (not-a-hit: its "
                 f"probe does not match the record); signed refusal written to {out.path}")
            return EXIT_OK
    header = _header(st, blob)
    emit(args, {"state": st.config.name, "peer": res.requester, "profile": header.profile if header else None,
                "query_id": res.query_id, "followup_id": res.followup_id, "reference": res.reference,
                "refused": None, "out": None},
         f"{res.reference}  (released to {res.requester} for query {res.query_id})")
    return EXIT_OK


def _check_answer(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.queries is not None:
        if args.query is not None or args.out is not None or args.keys:
            p.error("--queries answers a directory into --out-dir; QUERY_FILE, --out and --keys answer one file")
        if args.out_dir is None:
            p.error("--queries needs --out-dir (one answer file per query: a-0000.msg, ...)")
        return
    if args.query is None or args.out is None:
        p.error("give QUERY_FILE and --out, or --queries QUERY_DIR and --out-dir ANSWER_DIR")
    if args.out_dir is not None:
        p.error("--out-dir goes with --queries; one query is answered into --out")
    refuse_overwriting_inputs(p, {"--out": args.out}, {"QUERY_FILE": args.query, "--keys": args.keys})


def answer_file_name(query_file: str) -> str:
    """The answer file for a query file of a batch: ``q-0007.msg`` -> ``a-0007.msg``, else ``a-NAME``.

    Args:
        query_file: the query file's name (no directory).

    Returns:
        The answer file's name.
    """
    return "a-" + (query_file[2:] if query_file.startswith("q-") else query_file)


def _write_answer(path: str, message: bytes) -> None:
    # Answers are public (boxed to their requester), readable as pprm answer --out writes them.
    atomic_write_bytes(path, message, mode=0o644)


def _cmd_answer_many(args: argparse.Namespace) -> int:
    st = State.open(args.dir)
    responder = Responder(st, key_service=remote_key_service(st, args.key_service))
    try:
        names = sorted(n for n in os.listdir(args.queries) if n.endswith(".msg"))
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, args.queries) from None
    if not names:
        raise ParameterError(f"{args.queries} holds no .msg query files")
    os.makedirs(args.out_dir, exist_ok=True)
    inputs = {os.path.realpath(os.path.join(args.queries, n)) for n in names}
    outs = [os.path.join(args.out_dir, answer_file_name(n)) for n in names]
    for out in outs:
        if os.path.realpath(out) in inputs:
            raise ParameterError(f"{out} is one of the query files: choose another --out-dir")
    items: list[dict[str, Any]] = [{} for _ in names]
    sealed: list[int] = []
    queries: list[bytes] = []
    for i, name in enumerate(names):
        items[i] = {"query_file": name, "out": None, "peer": None, "profile": None, "query_id": None,
                    "refused": None, "error": None}
        try:
            query, announcements = split_query_file(read_bytes(os.path.join(args.queries, name)))
        except (PprmError, OSError) as exc:
            items[i]["error"] = report.error_object(exc)
            continue
        if announcements:  # a blind query bringing its keys: answered on its own
            try:
                one = responder.respond(query, sink=functools.partial(_write_answer, outs[i]),
                                        announcements=announcements)
                items[i].update(out=outs[i], peer=one.peer, profile=one.profile, query_id=one.query_id,
                                refused=one.refused)
            except PprmError as exc:
                items[i]["error"] = report.error_object(exc)
            continue
        sealed.append(i)
        queries.append(query)
    with ProgressBar("matching", unit="blocks") as bar:
        outcomes = responder.respond_many(queries, sinks=[functools.partial(_write_answer, outs[i])
                                                          for i in sealed], progress=bar.callback)
    for i, res in zip(sealed, outcomes, strict=True):
        if isinstance(res, PprmError):
            items[i]["error"] = report.error_object(res)
        else:
            items[i].update(out=outs[i], peer=res.peer, profile=res.profile, query_id=res.query_id,
                            refused=res.refused)
    lines = []
    for item in items:
        if item["error"] is not None:
            lines.append(f"{item['query_file']}: not answered: {item['error']['message']}")
        else:
            what = "answer" if item["refused"] is None else f"refusal ({item['refused']})"
            lines.append(f"{item['query_file']}: {what} to query {item['query_id']} from {item['peer']} "
                         f"written to {item['out']}")
    failed = [it for it in items if it["error"] is not None]
    lines.append(f"{len(items) - len(failed)} of {len(items)} queries answered or refused, "
                 f"{len(queries)} matched in one pass")
    body = {"state": st.config.name, "out_dir": args.out_dir, "answers": items}
    if not failed:
        emit(args, body, "\n".join(lines), fmt=ANSWER_BATCH)
        return EXIT_OK
    error = (failed[0]["error"]["code"], f"{failed[0]['query_file']}: not answered: {failed[0]['error']['message']}"
             + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""))
    emit(args, body, "\n".join(lines), fmt=ANSWER_BATCH, ok=False, error=error)
    report.error_line(error[1])
    return EXIT_ERROR


def _check_follow_up(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (args.token is None) == (args.candidate is None):
        p.error("give the candidate as TOKEN or as --candidate N (its number in 'pprm open', from 1), not both"
                if args.token is not None else
                "give the candidate: TOKEN, or --candidate N (its number in 'pprm open', from 1)")
    refuse_overwriting_inputs(p, {"--out": args.out}, {"ANSWER_FILE": args.answer})


def _check_resolve(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    refuse_overwriting_inputs(p, {"--refusal-out": args.refusal_out}, {"FOLLOWUP_FILE": args.followup})


# -- parser -------------------------------------------------------------------------------------

def _add_query(verbs: Verbs) -> None:
    p = verbs.add("query", _cmd_query, "write a signed query for a peer (blind, under a new key: one file with "
                                       "the key's announcement)")
    p.add_argument("dir")
    p.add_argument("--probe", default=None, help=".npy template of shape (dim,) or (1, dim)")
    p.add_argument("--probes", default=None, metavar="FILE",
                   help=".npy array of shape (N, dim): one query per row (each with its own id, audit entry and "
                        "answer), written to --out-dir as q-0000.msg, q-0001.msg, ... (row numbers from 0); "
                        "blind: one key for the batch, announced in the first file, which the peer must answer "
                        "first; a follow-up retires that key, so open every answer first, and query a probe again "
                        "to follow up another probe's candidates")
    face_cmds.add_query_args(p)
    # Checked here, with --probes; the face inputs' own check runs for one probe.
    p.set_defaults(check=functools.partial(_check_query, p.get_default("check"), p))
    p.add_argument("--to", required=True, help="the peer's state code")
    p.add_argument("--case", required=True, help="case reference")
    p.add_argument("--purpose", required=True,
                   help="purpose of the search, one of this state's purposes (default list: serious-crime, "
                        "missing-person, unidentified-remains)")
    p.add_argument("--out", default=None, help="query message file to write (one probe)")
    p.add_argument("--out-dir", default=None, metavar="DIR",
                   help="with --probes: the directory the query files are written to (made if missing; must "
                        "hold no q-*.msg file yet)")
    p.add_argument("--profile", choices=PROFILES, default=None,
                   help="sealed: the peer sees the probe; blind: it stays encrypted under this state's key "
                        "(default: the per-peer setting in state.json, else sealed)")
    p.add_argument("--keys-out", default=None, metavar="KEYS_FILE",
                   help="blind: write a new key's announcement to this separate file, and the query alone to "
                        "OUT (default: OUT holds both, as one delivery; a query that needs no announcement, and "
                        "every sealed query, is written as the bare signed message; with --probes: the first "
                        "file's)")


def _add_answer(verbs: Verbs) -> None:
    p = verbs.add("answer", _cmd_answer, "answer a query addressed to this state (or refuse it by policy)")
    p.add_argument("dir")
    p.add_argument("query", metavar="QUERY_FILE", nargs="?", default=None,
                   help="as pprm query wrote it: the bare signed query, or a delivery (the query and the key "
                        "announcements that travel with it, the body pprm ask posts)")
    p.add_argument("--out", default=None, help="answer message file to write (with QUERY_FILE)")
    p.add_argument("--queries", default=None, metavar="QUERY_DIR",
                   help="answer every *.msg file in QUERY_DIR (as pprm query --probes writes them), the sealed "
                        "queries in one pass over the gallery; each gets its own answer or refusal")
    p.add_argument("--out-dir", default=None, metavar="ANSWER_DIR",
                   help="with --queries: where the answers go, q-0000.msg answered in a-0000.msg (made if missing)")
    p.add_argument("--keys", action="append", metavar="KEYS_FILE",
                   help="blind: a separate key announcement to accept with the query (repeatable; from pprm "
                        "query --keys-out, or an older pprm's OUT.keys)")
    add_key_service_arg(p)
    p.set_defaults(check=functools.partial(_check_answer, p))


def _add_open(verbs: Verbs) -> None:
    p = verbs.add("open", _cmd_open, "open an answer to one of this state's queries and list its candidates, "
                                     "numbered from 1 for follow-up --candidate (a signed refusal of a query or "
                                     "follow-up is recorded and reported as an error)")
    p.add_argument("dir")
    p.add_argument("answer", metavar="ANSWER_FILE")


def _add_follow_up(verbs: Verbs) -> None:
    p = verbs.add("follow-up", _cmd_follow_up, "ask for the record behind one candidate, given as its token or "
                                               "handle, or as its number (--candidate N)")
    p.add_argument("dir")
    p.add_argument("answer", metavar="ANSWER_FILE")
    p.add_argument("token", nargs="?", default=None, metavar="TOKEN",
                   help="the candidate's token (sealed) or handle (blind), as pprm open lists it")
    p.add_argument("--candidate", type=int_at_least(1), default=None, metavar="N",
                   help="the N-th candidate of the answer, numbered from 1 as pprm open and pprm ask list them "
                        "(opens the answer as pprm open does)")
    p.add_argument("--out", default=None, help="follow-up message file to write")
    p.add_argument("--peers", default=None, help="send it over HTTP instead: JSON file, state code -> service URL")
    p.add_argument("--router", default=None, help="send it over HTTP through this router")
    p.set_defaults(check=functools.partial(_check_follow_up, p))


def _add_resolve(verbs: Verbs) -> None:
    p = verbs.add("resolve", _cmd_resolve, "resolve a follow-up to its reference (logged), or refuse a blind "
                                           "one whose probe does not match the record")
    p.add_argument("dir")
    p.add_argument("followup", metavar="FOLLOWUP_FILE")
    p.add_argument("--refusal-out", default=None,
                   help="blind: where to write the signed refusal when the follow-up's probe does not match the "
                        "record behind its handle (default: FOLLOWUP_FILE.refusal)")
    add_key_service_arg(p)
    p.set_defaults(check=functools.partial(_check_resolve, p))


# Verb name -> the function adding it; pprm.cli.main chooses the order.
VERBS: dict[str, AddVerb] = {
    "query": _add_query,
    "answer": _add_answer,
    "open": _add_open,
    "follow-up": _add_follow_up,
    "resolve": _add_resolve,
}
