"""The ``pprm`` command line.

Each verb is a thin wrapper over the Python API (:mod:`pprm.node`); state
lives in a directory (see :class:`pprm.node.state.State`), messages travel as
files the operators exchange by whatever channel their Prüm setup uses.

Exit codes: 0 success; 1 an expected error (one line on stderr, no state
change; for ``open``, also a peer's signed refusal, which is recorded); 2 a
usage error; 3 ``pprm demo`` found a disagreement with the
plaintext truth. Reporting verbs take ``--json`` for one JSON value on stdout.
Nothing here ever prints a secret key, a template or a score.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import IO, Any

import numpy as np

import pprm
from pprm.cli import face_cmds
from pprm.cli.demo import DEMO_STATES, MIN_GALLERY, format_report, run_demo
from pprm.cli.net_cmds import add_net_verbs
from pprm.cli.progress import ProgressBar, StagedProgress
from pprm.crypto import blind_params as blind_param_sets
from pprm.crypto import params as param_sets
from pprm.errors import ParameterError, PprmError, StateError, TemplateError
from pprm.node.keyservice import KeyService
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from pprm.node.state import State
from pprm.protocol.envelope import open_envelope

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_MISMATCH"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_MISMATCH = 3


# -- input and output helpers -------------------------------------------------

def _read_bytes(path: str) -> bytes:
    """A message or card file; ``-`` reads stdin."""
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as fh:
        return fh.read()


def _load_npy(path: str, what: str) -> np.ndarray:
    """Load a plain .npy array without ever unpickling.

    Raises:
        TemplateError: not a .npy array (malformed, truncated, pickled, .npz).
        OSError: the file cannot be read.
    """
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, EOFError):
        # numpy's messages can run over several lines; ours is one.
        raise TemplateError(f"{what} file {path} is not a valid .npy array") from None
    if not isinstance(arr, np.ndarray):
        arr.close()
        raise TemplateError(f"{what} file {path} is an archive, not a single .npy array")
    return arr


def _read_refs(path: str) -> list[str]:
    """One reference per line, UTF-8; a final newline is optional, CRLF is accepted.

    Raises:
        TemplateError: not UTF-8, empty, or a blank line.
        OSError: the file cannot be read.
    """
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TemplateError(f"references file {path} is not valid UTF-8") from None
    text = text.removeprefix("\ufeff")
    text = text.removesuffix("\n")
    if not text:
        raise TemplateError(f"references file {path} is empty")
    refs = []
    for n, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            raise TemplateError(f"references file {path} line {n} is blank")
        refs.append(line)
    return refs


class _AtomicOutput:
    """An output file that appears whole or not at all.

    The temporary file is created beside the target when the object is made,
    so an unwritable destination fails before any state changes; it is
    renamed over the target only by :meth:`commit` and removed otherwise.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        if os.path.isdir(self.path):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{os.path.basename(self.path)}.", suffix=".part",
                                        dir=os.path.dirname(self.path))
        os.fchmod(fd, 0o644)
        self._fh: IO[bytes] = os.fdopen(fd, "wb")
        self._written = False
        self._committed = False

    def __repr__(self) -> str:
        return f"_AtomicOutput({self.path!r})"

    def write(self, data: bytes) -> None:
        """Replace the pending content with ``data`` (flushed to disk)."""
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(data)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._written = True

    def commit(self) -> None:
        """Rename the written content into place."""
        if not self._written:
            raise RuntimeError("nothing was written to the output")
        self._fh.close()
        os.replace(self.tmp, self.path)
        self._committed = True
        with contextlib.suppress(OSError):
            fd = os.open(os.path.dirname(self.path), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def __enter__(self) -> _AtomicOutput:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self._committed:
            self._fh.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp)


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _emit(args: argparse.Namespace, obj: Any, text: str) -> None:
    """Print ``obj`` as JSON with ``--json``, else ``text``."""
    if getattr(args, "json", False):
        print(json.dumps(obj, indent=1, ensure_ascii=False))
    else:
        print(text)


# -- verbs ----------------------------------------------------------------------

def _cmd_init(args: argparse.Namespace) -> int:
    profiles = dict((args.blind_peers and [(peer, "blind") for peer in args.blind_peers]) or [])
    st = State.init(args.dir, args.name, threshold=args.threshold, params=args.params, k=args.k,
                    dim=args.dim, allow_insecure=args.allow_insecure, blind_params=args.blind_params,
                    profiles=profiles, purposes=args.purposes)
    ps = st.config.parameter_set
    if ps.insecure:
        print(f"pprm: warning: {ps.name} is insecure; use it for tests only", file=sys.stderr)
    info = {"name": st.config.name, "dir": st.dir, "params": ps.name, "params_digest": ps.digest,
            "blind_params": st.config.blind_params, "profiles": st.config.profiles,
            "threshold": st.config.threshold, "k": st.config.k, "dim": st.config.dim,
            "purposes": list(st.config.purposes),
            "fingerprint": st.card.identity.fingerprint.hex(), "key_id": st.key_id}
    _emit(args, info, "\n".join([
        f"initialised state {info['name']} in {info['dir']}",
        f"  params       {ps.name} (sealed), {st.config.blind_params} (blind)",
        f"  purposes     {', '.join(st.config.purposes)}",
        f"  fingerprint  {info['fingerprint']}",
        f"  ckks key id  {info['key_id']}",
        f"next: publish 'pprm card {args.dir}' to your peers and 'pprm trust' theirs",
    ]))
    return EXIT_OK


def _cmd_card(args: argparse.Namespace) -> int:
    blob = State.open(args.dir).card_bytes
    sys.stdout.flush()
    out = getattr(sys.stdout, "buffer", None)
    if out is not None:
        out.write(blob)
        out.flush()
    else:  # a text-only stdout (embedded use); cards are ASCII
        sys.stdout.write(blob.decode("ascii"))
    return EXIT_OK


def _cmd_trust(args: argparse.Namespace) -> int:
    st = State.open(args.dir)
    card = st.trust(_read_bytes(args.card))
    info = {"name": card.name, "fingerprint": card.identity.fingerprint.hex(), "params": card.params,
            "dim": card.dim, "key_id": card.key_id}
    _emit(args, info, f"trusted {card.name} (fingerprint {info['fingerprint']}, params {card.params})")
    return EXIT_OK


def _cmd_enroll(args: argparse.Namespace) -> int:
    st = State.open(args.dir)
    skipped = None
    if args.images is not None:  # face pipeline; images without a face are reported and skipped
        templates, refs, skipped = face_cmds.templates_from_folder(args, st)
    else:
        templates = _load_npy(args.templates, "templates")
        refs = _read_refs(args.refs)
    ks = KeyService(st)
    with ProgressBar("enrolling") as bar:
        ids = ks.enroll(templates, refs, progress=bar.callback)
    total = len(st.gallery())
    report: dict[str, Any] = {"enrolled": len(ids), "total": total}
    text = f"enrolled {len(ids)} template(s) into {st.config.name}; the gallery holds {total}"
    if skipped is not None:
        report["skipped"] = skipped
        text += f" ({len(skipped)} image(s) skipped)" if skipped else ""
    _emit(args, report, text)
    return EXIT_OK


def _cmd_remove(args: argparse.Namespace) -> int:
    st = State.open(args.dir)
    KeyService(st).remove(args.ref)
    total = len(st.gallery())
    _emit(args, {"removed": args.ref, "total": total},
          f"removed {args.ref} from {st.config.name}; the gallery holds {total}")
    return EXIT_OK


def _cmd_query(args: argparse.Namespace) -> int:
    st = State.open(args.dir)
    probe = face_cmds.probe_from_image(args, st) if args.image is not None else _load_npy(args.probe, "probe")
    profile = args.profile or st.config.profile_for(args.to)
    if profile == "blind":
        return _blind_query(args, st, probe)
    with _AtomicOutput(args.out) as out:
        msg = Requester(st).query(args.to, probe, args.case, args.purpose)
        h = st.header_of_own(msg, args.to)
        out.write(msg)
        out.commit()
    _emit(args, {"to": args.to, "query_id": h.id, "out": out.path},
          f"query {h.id} to {args.to} written to {args.out}")
    return EXIT_OK


def _blind_query(args: argparse.Namespace, st: State, probe: np.ndarray) -> int:
    keys_path = args.keys_out or f"{args.out}.keys"
    with _AtomicOutput(args.out) as out, _AtomicOutput(keys_path) as keys_out:

        def sink(announcement: bytes | None, query: bytes) -> None:
            # Both files are complete on disk (written, fsynced) before either is
            # renamed into place, and both before the key or the query is recorded.
            out.write(query)
            if announcement is not None:
                keys_out.write(announcement)
                keys_out.commit()
            out.commit()

        announcement, msg = Requester(st).blind_query(args.to, probe, args.case, args.purpose, sink=sink)
        h = st.header_of_own(msg, args.to)
    report: dict[str, Any] = {"to": args.to, "query_id": h.id, "out": out.path, "profile": "blind",
                              "keys": keys_out.path if announcement is not None else None}
    text = f"blind query {h.id} to {args.to} written to {args.out}"
    if announcement is not None:
        text += f"; new key announcement written to {keys_path} (deliver it first)"
    _emit(args, report, text)
    return EXIT_OK


def _cmd_answer(args: argparse.Namespace) -> int:
    st = State.open(args.dir)
    blob = _read_bytes(args.query)
    announcements = [_read_bytes(k) for k in args.keys or []]
    # Read-only look at the header for the report (answer() verifies it all
    # again); done first so that nothing can fail after the state changed.
    h = open_envelope(blob, lookup=st.lookup, me=st.config.name,
                      params_digest=st.config.parameter_set.digest,
                      blind_digest=st.config.blind_parameter_set.digest).header

    with _AtomicOutput(args.out) as out, ProgressBar("matching") as bar:
        # sink runs before the query is marked used: if the write fails, the
        # query stays unanswered and can be answered again.
        res = Responder(st).respond(blob, sink=out.write, progress=bar.callback, announcements=announcements)
        out.commit()
    # A refusal by policy is a valid protocol outcome (signed, logged): exit 0.
    text = (f"answer to query {h.id} from {h.sender} written to {args.out}" if res.refused is None else
            f"refusal ({res.refused}) of query {h.id} from {h.sender} written to {args.out}: {res.reason}")
    _emit(args, {"to": h.sender, "query_id": h.id, "out": out.path, "refused": res.refused}, text)
    return EXIT_OK


def _cmd_open(args: argparse.Namespace) -> int:
    st = State.open(args.dir)
    opened = Requester(st).open(_read_bytes(args.answer))
    lines = [f"answer from {opened.sender} to query {opened.query_id}: "
             f"{'HIT' if opened.hit else 'no hit'}, {len(opened.candidates)} candidate(s)"]
    lines += [f"  {tok}" for tok in opened.candidates]
    _emit(args, opened.to_json(), "\n".join(lines))
    return EXIT_OK


def _cmd_follow_up(args: argparse.Namespace) -> int:
    st = State.open(args.dir)
    blob = _read_bytes(args.answer)
    if args.out is None:
        if args.peers is None and args.router is None:
            raise ParameterError("give --out FILE, or --peers FILE / --router URL to send the follow-up")
        from pprm.cli.net_cmds import send_follow_up_cmd

        return send_follow_up_cmd(args, st, blob)
    req = Requester(st)
    with _AtomicOutput(args.out) as out:
        opened = req.open(blob)
        out.write(req.follow_up(blob, args.token))
        out.commit()
    _emit(args, {"to": opened.sender, "query_id": opened.query_id, "out": out.path},
          f"follow-up to {opened.sender} for query {opened.query_id} written to {args.out}")
    return EXIT_OK


def _cmd_resolve(args: argparse.Namespace) -> int:
    st = State.open(args.dir)
    res = KeyService(st).resolve(_read_bytes(args.followup))
    _emit(args, {"reference": res.reference},
          f"{res.reference}  (released to {res.requester} for query {res.query_id})")
    return EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    st = State.open(args.dir)
    c = st.config
    roster = sorted(st.roster())
    info = {"name": c.name, "params": c.params, "params_digest": c.parameter_set.digest,
            "blind_params": c.blind_params, "blind_params_digest": c.blind_parameter_set.digest,
            "profiles": c.profiles,
            "threshold": c.threshold, "k": c.k, "dim": c.dim, "gallery": len(st.gallery()),
            "purposes": list(c.purposes), "quota_per_case": c.quota_per_case, "quota_per_peer": c.quota_per_peer,
            "roster": roster, "backend": pprm.BACKEND,
            "fingerprint": st.card.identity.fingerprint.hex(), "key_id": st.key_id}
    _emit(args, info, "\n".join([
        f"state        {c.name}  ({st.dir})",
        f"params       {c.params} (sealed), {c.blind_params} (blind)",
        f"blind peers  {', '.join(p for p, v in sorted(c.profiles.items()) if v == 'blind') or '(none)'}",
        f"threshold    {c.threshold}",
        f"k            {c.k}",
        f"dim          {c.dim}",
        f"purposes     {', '.join(c.purposes)}",
        f"quotas       {c.quota_per_case} per case, {c.quota_per_peer} per peer (per requesting state, 24 h)",
        f"gallery      {info['gallery']} record(s)",
        f"roster       {', '.join(roster) or '(empty)'}",
        f"backend      {pprm.BACKEND}",
        f"fingerprint  {info['fingerprint']}",
    ]))
    return EXIT_OK


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    st = State.open(args.dir)
    rep = st.audit.check()
    signed = (f", {rep.checkpoints} signed checkpoint(s), signed head at line {rep.head + 1}"
              if rep.head is not None else ", not signed yet (no checkpoint, no head)")
    if rep.unsigned:
        signed += (f"; {rep.unsigned} line(s) after the head are not signed yet (an interrupted append leaves"
                   " this; the next entry records it)")
    _emit(args, {"entries": rep.entries, "ok": True, "checkpoints": rep.checkpoints, "head": rep.head,
                 "unsigned": rep.unsigned},
          f"audit log of {st.config.name} verifies: {rep.entries} entries{signed}")
    return EXIT_OK


def _cmd_audit_show(args: argparse.Namespace) -> int:
    st = State.open(args.dir)
    try:
        entries = st.audit.entries(checkpoints=True)
    except ValueError:
        raise StateError("audit log has a damaged line; run 'pprm audit verify'") from None
    lines = []
    for e in entries:
        fields = " ".join(f"{k}={v}" for k, v in sorted(e.get("data", {}).items()))
        lines.append(f"{e.get('seq'):>6}  {e.get('time')}  {e.get('event', ''):<16} {fields}")
    _emit(args, entries, "\n".join(lines) if lines else "(audit log is empty)")
    return EXIT_OK


def _cmd_bench(args: argparse.Namespace) -> int:
    # Imported here: the benchmark pulls in its own machinery, which the other
    # verbs should not pay for at start-up.
    from pprm.cli.bench import format_table, run_bench

    def status(message: str) -> None:
        print(f"pprm bench: {message}", file=sys.stderr, flush=True)

    progress = status if _stderr_is_tty() else None
    if args.profile == "blind":
        from pprm.cli.bench_blind import format_blind_table, run_blind_bench

        params = blind_param_sets.DEFAULT_BLIND_PARAMS if args.params is None else args.params
        blind = run_blind_bench(args.sizes, params, args.repeats, progress=progress,
                                allow_insecure=args.allow_insecure)
        print(json.dumps(blind, indent=1) if args.json else format_blind_table(blind))
        return EXIT_OK
    result = run_bench(args.sizes, param_sets.DEFAULT_PARAMS if args.params is None else args.params, args.repeats,
                       progress=progress, allow_insecure=args.allow_insecure)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(format_table(result))
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    with StagedProgress() as staged:
        result = run_demo(args.dir, states=args.states, gallery=args.gallery, seed=args.seed,
                          params=args.params, progress=staged if staged.enabled else None)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(format_report(result))
    return EXIT_OK if result["ok"] else EXIT_MISMATCH


# -- parser ---------------------------------------------------------------------

def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}")
        return value
    return parse


def _sizes(text: str) -> list[int]:
    parts = [p.strip() for p in text.split(",")]
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError("sizes must be comma-separated integers, e.g. 10000,100000") from None
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError("sizes must be positive")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pprm`` command.

    Returns:
        A parser whose namespaces carry the verb's handler as ``func``.
    """
    parser = argparse.ArgumentParser(
        prog="pprm", description="Privacy-preserving face matching between states (Prüm II style).")
    parser.add_argument("--version", action="version", version=f"pprm {pprm.__version__}")
    js = argparse.ArgumentParser(add_help=False)
    js.add_argument("--json", action="store_true", help="print one JSON value on stdout")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, func: Callable[[argparse.Namespace], int], help_: str,
             json_out: bool = True, on: Any = sub) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = on.add_parser(name, help=help_, description=help_,
                                                   parents=[js] if json_out else [])
        p.set_defaults(func=func)
        return p

    p = verb("init", _cmd_init, "create a state directory with fresh keys")
    p.add_argument("dir")
    p.add_argument("--name", required=True, help="state code, e.g. DE")
    p.add_argument("--threshold", type=float, default=0.4, help="decision threshold (default 0.4)")
    p.add_argument("--params", default=None,
                   help=f"parameter set (default {param_sets.DEFAULT_PARAMS}; "
                        f"known: {', '.join(param_sets.names())})")
    p.add_argument("--k", type=int, default=10, help="candidate cap per query (default 10)")
    p.add_argument("--dim", type=int, default=512, help="template dimension (default 512)")
    p.add_argument("--allow-insecure", action="store_true", help="accept INSECURE* parameter sets (tests only)")
    p.add_argument("--blind-params", default=None,
                   help=f"blind-profile parameter set (default {blind_param_sets.DEFAULT_BLIND_PARAMS}; "
                        f"known: {', '.join(blind_param_sets.names())})")
    p.add_argument("--blind-peer", dest="blind_peers", action="append", metavar="CODE",
                   help="query this peer in the blind profile by default (repeatable)")
    p.add_argument("--purpose", dest="purposes", action="append", metavar="PURPOSE",
                   help="a purpose this state answers and sends queries for, replacing the default list "
                        "serious-crime, missing-person, unidentified-remains (repeatable)")

    p = verb("card", _cmd_card, "print this state's public card", json_out=False)
    p.add_argument("dir")

    p = verb("trust", _cmd_trust, "add a peer's card to the roster")
    p.add_argument("dir")
    p.add_argument("card", metavar="CARD_FILE", help="card file ('-' for stdin)")

    p = verb("enroll", _cmd_enroll, "encrypt templates into the gallery")
    p.add_argument("dir")
    p.add_argument("--templates", default=None, help=".npy array of shape (N, dim); needs --refs")
    p.add_argument("--refs", default=None, help="text file, one UTF-8 reference per line")
    face_cmds.add_enroll_args(p)

    p = verb("embed", face_cmds.cmd_embed, "detect, align and embed the faces in images into a .npy of templates")
    face_cmds.add_embed_args(p)

    p = verb("remove", _cmd_remove, "remove one reference from the gallery")
    p.add_argument("dir")
    p.add_argument("ref")

    p = verb("query", _cmd_query, "write a signed query for a peer")
    p.add_argument("dir")
    p.add_argument("--probe", default=None, help=".npy template of shape (dim,) or (1, dim)")
    face_cmds.add_query_args(p)
    p.add_argument("--to", required=True, help="the peer's state code")
    p.add_argument("--case", required=True, help="case reference")
    p.add_argument("--purpose", required=True,
                   help="purpose of the search, one of this state's purposes (default list: serious-crime, "
                        "missing-person, unidentified-remains)")
    p.add_argument("--out", required=True, help="query message file to write")
    p.add_argument("--profile", choices=("sealed", "blind"), default=None,
                   help="sealed: the peer sees the probe; blind: it stays encrypted under this state's key "
                        "(default: the per-peer setting in state.json, else sealed)")
    p.add_argument("--keys-out", default=None,
                   help="blind: where to write a new key announcement (default: OUT.keys)")

    p = verb("answer", _cmd_answer, "answer a query addressed to this state (or refuse it by policy)")
    p.add_argument("dir")
    p.add_argument("query", metavar="QUERY_FILE")
    p.add_argument("--out", required=True, help="answer message file to write")
    p.add_argument("--keys", action="append", metavar="KEYS_FILE",
                   help="blind: a key announcement to accept first (repeatable)")

    p = verb("open", _cmd_open, "open an answer to one of this state's queries")
    p.add_argument("dir")
    p.add_argument("answer", metavar="ANSWER_FILE")

    p = verb("follow-up", _cmd_follow_up, "ask for the record behind one candidate token")
    p.add_argument("dir")
    p.add_argument("answer", metavar="ANSWER_FILE")
    p.add_argument("token")
    p.add_argument("--out", default=None, help="follow-up message file to write")
    p.add_argument("--peers", default=None, help="send it over HTTP instead: JSON file, state code -> service URL")
    p.add_argument("--router", default=None, help="send it over HTTP through this router")

    p = verb("resolve", _cmd_resolve, "resolve a follow-up to its reference (logged)")
    p.add_argument("dir")
    p.add_argument("followup", metavar="FOLLOWUP_FILE")

    p = verb("info", _cmd_info, "show a state's settings, gallery size and roster")
    p.add_argument("dir")

    audit = sub.add_parser("audit", help="check or show the audit log", description="check or show the audit log")
    asub = audit.add_subparsers(dest="audit_verb", required=True, metavar="ACTION")
    p = verb("verify", _cmd_audit_verify,
             "verify the hash chain, the signed checkpoints and the signed head", on=asub)
    p.add_argument("dir")
    p = verb("show", _cmd_audit_show, "list the entries, checkpoints included", on=asub)
    p.add_argument("dir")

    p = verb("bench", _cmd_bench, "benchmark the sealed or blind matcher on synthetic galleries")
    p.add_argument("--profile", choices=("sealed", "blind"), default="sealed",
                   help="profile to benchmark (default sealed)")
    p.add_argument("--sizes", type=_sizes, default=[10000, 100000], help="gallery sizes (default 10000,100000)")
    p.add_argument("--params", default=None,
                   help=f"parameter set of the profile (default {param_sets.DEFAULT_PARAMS} for sealed, "
                        f"{blind_param_sets.DEFAULT_BLIND_PARAMS} for blind)")
    p.add_argument("--repeats", type=_int_at_least(1), default=3, help="queries timed per size (default 3)")
    p.add_argument("--allow-insecure", action="store_true",
                   help="accept INSECURE* parameter sets (quick smoke runs; the figures mean nothing)")

    p = verb("demo", _cmd_demo, "run several states end to end on synthetic data and check every answer")
    p.add_argument("--states", type=_int_at_least(2), default=3,
                   help=f"number of states, 2..{len(DEMO_STATES)} (default 3)")
    p.add_argument("--gallery", type=_int_at_least(MIN_GALLERY), default=5000,
                   help="synthetic templates per state (default 5000)")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of all synthetic data (default 0)")
    p.add_argument("--params", default=param_sets.DEFAULT_PARAMS,
                   help=f"parameter set (default {param_sets.DEFAULT_PARAMS}; INSECURE-sealed-n1024 is "
                        "allowed for the demo's throwaway states)")
    p.add_argument("--dir", default=None, help="keep the state directories here (default: a temporary directory)")

    add_net_verbs(verb)
    return parser


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _os_message(exc: OSError) -> str:
    what = exc.strerror or str(exc)
    return f"{exc.filename}: {what}" if exc.filename else what


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pprm`` command.

    Args:
        argv: arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        The exit code (0 ok, 1 error, 2 usage, 3 demo mismatch).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "check", None) is not None:  # option combinations argparse cannot express
            args.check(args)
    except SystemExit as exc:  # usage errors, --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK if exc.code is None else EXIT_USAGE
    try:
        return int(args.func(args))
    except PprmError as exc:
        message = _one_line(str(exc)) or type(exc).__name__
    except OSError as exc:
        message = _one_line(_os_message(exc))
    except KeyboardInterrupt:
        print("pprm: interrupted", file=sys.stderr)
        return 130
    print(f"pprm: error: {message}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover - `python -m pprm.cli.main`
    sys.exit(main())
