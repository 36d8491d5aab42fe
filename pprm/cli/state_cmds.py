"""The verbs that create and look after a state.

``init``, ``card``, ``trust``, ``enroll``, ``remove``, ``info`` and ``audit``.

Each is a thin wrapper over :class:`pprm.node.state.State` and
:class:`pprm.node.keyservice.KeyService`; the state lives in a directory.
``enroll --images`` takes its templates from photos through
:mod:`pprm.cli.face_cmds`.
"""

from __future__ import annotations

import argparse
import functools
import sys
from datetime import UTC, datetime
from typing import Any

from pprm.cli import face_cmds, report
from pprm.cli.common import EXIT_ERROR, EXIT_OK, AddVerb, Verbs, emit, load_npy, read_bytes, read_refs
from pprm.cli.keyservice_cmds import add_key_service_arg
from pprm.cli.progress import ProgressBar
from pprm.crypto import blind_params as blind_param_sets
from pprm.crypto import params as param_sets
from pprm.errors import StateError
from pprm.matching import kernel
from pprm.node.audit import AuditLog, AuditReport
from pprm.node.remote_keys import key_service_for
from pprm.node.split import keyservice_logs
from pprm.node.state import State

__all__ = ["VERBS"]


def _cmd_init(args: argparse.Namespace) -> int:
    profiles = dict((args.blind_peers and [(peer, "blind") for peer in args.blind_peers]) or [])
    st = State.init(args.dir, args.name, threshold=args.threshold, params=args.params, k=args.k,
                    dim=args.dim, allow_insecure=args.allow_insecure, blind_params=args.blind_params,
                    profiles=profiles, purposes=args.purposes)
    ps = st.config.parameter_set
    if ps.insecure:
        print(f"pprm: warning: {ps.name} is insecure; use it for tests only", file=sys.stderr)
    info = {"state": st.config.name, "dir": st.dir, "params": ps.name, "params_digest": ps.digest,
            "blind_params": st.config.blind_params, "profiles": st.config.profiles,
            "threshold": st.config.threshold, "k": st.config.k, "dim": st.config.dim,
            "purposes": list(st.config.purposes),
            "fingerprint": st.card.identity.fingerprint.hex(), "key_id": st.key_id}
    emit(args, info, "\n".join([
        f"initialised state {info['state']} in {info['dir']}",
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
    card = st.trust(read_bytes(args.card))
    info = {"state": st.config.name, "peer": card.name, "fingerprint": card.identity.fingerprint.hex(),
            "params": card.params, "dim": card.dim, "key_id": card.key_id}
    emit(args, info, f"trusted {card.name} (fingerprint {info['fingerprint']}, params {card.params})")
    return EXIT_OK


def _cmd_enroll(args: argparse.Namespace) -> int:
    st = State.open(args.dir)
    skipped = None
    if args.images is not None:  # face pipeline; images without a face are reported and skipped
        templates, refs, skipped = face_cmds.templates_from_folder(args, st)
    else:
        templates = load_npy(args.templates, "templates")
        refs = read_refs(args.refs)
    ks = key_service_for(st, args.key_service)
    with ProgressBar("enrolling", unit="templates") as bar:
        ids = ks.enroll(templates, refs, progress=bar.callback)
    total = len(st.gallery())
    report: dict[str, Any] = {"state": st.config.name, "enrolled": len(ids), "total": total}
    text = f"enrolled {len(ids)} template(s) into {st.config.name}; the gallery holds {total}"
    if skipped is not None:
        report["skipped"] = skipped
        text += f" ({len(skipped)} image(s) skipped)" if skipped else ""
    emit(args, report, text)
    return EXIT_OK


def _cmd_remove(args: argparse.Namespace) -> int:
    # The list is read whole before the state is touched: a bad file changes nothing.
    refs = read_refs(args.refs) if args.refs is not None else None
    st = State.open(args.dir)
    ks = key_service_for(st, args.key_service)
    if refs is None:
        ks.remove(args.ref)
        total = len(st.gallery())
        emit(args, {"state": st.config.name, "removed": 1, "references": [args.ref], "total": total},
             f"removed {args.ref} from {st.config.name}; the gallery holds {total}")
        return EXIT_OK
    with ProgressBar("removing", unit="blocks") as bar:
        removed = ks.remove_many(refs, progress=bar.callback)
    total = len(st.gallery())
    emit(args, {"state": st.config.name, "removed": removed, "references": refs, "total": total},
         f"removed {removed} reference(s) from {st.config.name}; the gallery holds {total}")
    return EXIT_OK


def _check_remove(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (args.ref is None) == (args.refs is None):
        p.error("give one reference (REF) or a file of them (--refs FILE), not both" if args.ref is not None
                else "give the reference to remove (REF) or a file of them (--refs FILE)")


def _cmd_info(args: argparse.Namespace) -> int:
    st = State.open(args.dir)
    c = st.config
    roster = sorted(st.roster())
    backend = kernel.backend()
    info = {"state": c.name, "dir": st.dir, "params": c.params, "params_digest": c.parameter_set.digest,
            "blind_params": c.blind_params, "blind_params_digest": c.blind_parameter_set.digest,
            "profiles": c.profiles,
            "threshold": c.threshold, "k": c.k, "dim": c.dim, "gallery": len(st.gallery()),
            "purposes": list(c.purposes), "quota_per_case": c.quota_per_case, "quota_per_peer": c.quota_per_peer,
            "roster": roster, "backend": backend,
            "fingerprint": st.card.identity.fingerprint.hex(), "key_id": st.key_id}
    emit(args, info, "\n".join([
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
        f"backend      {backend}",
        f"fingerprint  {info['fingerprint']}",
    ]))
    return EXIT_OK


def _log_json(label: str, rep: AuditReport) -> dict[str, Any]:
    return {"log": label, "ok": True, "entries": rep.entries, "checkpoints": rep.checkpoints, "head": rep.head,
            "unsigned": rep.unsigned}


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    st = State.open(args.dir)
    name = st.config.name
    checked: list[dict[str, Any]] = []
    # A split state's key service keeps its own log of every decryption: checked with this one.
    logs: list[tuple[str, AuditLog]] = [(name, st.audit), *keyservice_logs(st.dir, args.keydir)]
    try:
        reports = []
        for i, (label, log) in enumerate(logs):
            try:
                r = log.check()
            except StateError as exc:
                checked.append({"log": label, "ok": False, "error": report.error_object(exc)})
                if i == 0:
                    raise
                raise StateError(f"{label}: {exc}") from None
            reports.append((label, r))
            checked.append(_log_json(label, r))
    except StateError as exc:
        if not args.json:
            raise
        # The log that fails is named in "logs" (ok false); the ones before it verified.
        emit(args, {"state": name, "logs": checked}, "", ok=False, error=exc)
        report.error_line(exc)
        return EXIT_ERROR
    (_, rep), others = reports[0], reports[1:]
    signed = (f", {rep.checkpoints} signed checkpoint(s), signed head at seq {rep.head}"
              if rep.head is not None else ", not signed yet (no checkpoint, no head)")
    if rep.unsigned:
        signed += (f"; {rep.unsigned} entr{'y' if rep.unsigned == 1 else 'ies'} after the head (seq "
                   f"{rep.head}) are not signed yet (an interrupted append leaves this; the next entry records it)")
    lines = [f"audit log of {name} verifies: {rep.entries} entries (seq 0-{rep.entries - 1}){signed}"
             if rep.entries else f"audit log of {name} verifies: 0 entries{signed}"]
    lines += [f"audit log of {label} verifies: {r.entries} entries" for label, r in others]
    info: dict[str, Any] = {"state": name, "entries": rep.entries, "checkpoints": rep.checkpoints,
                            "head": rep.head, "unsigned": rep.unsigned, "logs": checked}
    emit(args, info, "\n".join(lines))
    return EXIT_OK


def _utc(epoch: object) -> str | None:
    """An entry's time as ISO 8601 UTC (``2026-12-05T08:52:30Z``); None if it is not a number of seconds."""
    if type(epoch) is not int:
        return None
    try:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return None


def _cmd_audit_show(args: argparse.Namespace) -> int:
    st = State.open(args.dir)
    try:
        entries = st.audit.entries(checkpoints=True)
    except ValueError:
        raise StateError("audit log has a damaged line; run 'pprm audit verify'") from None
    lines = []
    shown = []
    for e in entries:
        when = _utc(e.get("time"))
        fields = " ".join(f"{k}={v}" for k, v in sorted(e.get("data", {}).items()))
        lines.append(f"{e.get('seq'):>6}  {when or e.get('time')}  {e.get('event', ''):<16} {fields}")
        # "time" is the ISO form; "epoch" is the value the log holds (and hashes) under "time".
        shown.append({"seq": e.get("seq"), "time": when, "epoch": e.get("time"),
                      **{k: v for k, v in e.items() if k not in ("seq", "time")}})
    emit(args, {"state": st.config.name, "entries": shown}, "\n".join(lines) if lines else "(audit log is empty)")
    return EXIT_OK


# -- parser -------------------------------------------------------------------------------------

def _add_init(verbs: Verbs) -> None:
    p = verbs.add("init", _cmd_init, "create a state directory with fresh keys")
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


def _add_card(verbs: Verbs) -> None:
    p = verbs.add("card", _cmd_card, "print this state's public card", json_out=False)
    p.add_argument("dir")


def _add_trust(verbs: Verbs) -> None:
    p = verbs.add("trust", _cmd_trust, "add a peer's card to the roster")
    p.add_argument("dir")
    p.add_argument("card", metavar="CARD_FILE", help="card file ('-' for stdin)")


def _add_enroll(verbs: Verbs) -> None:
    p = verbs.add("enroll", _cmd_enroll, "encrypt templates into the gallery")
    p.add_argument("dir")
    p.add_argument("--templates", default=None, help=".npy array of shape (N, dim); needs --refs")
    p.add_argument("--refs", default=None, help="text file, one UTF-8 reference per line")
    face_cmds.add_enroll_args(p)
    add_key_service_arg(p)


def _add_remove(verbs: Verbs) -> None:
    p = verbs.add("remove", _cmd_remove, "remove one reference, or a file of them, from the gallery")
    p.add_argument("dir")
    p.add_argument("ref", nargs="?", default=None, help="the reference to remove (or --refs)")
    p.add_argument("--refs", default=None, metavar="FILE",
                   help="remove every reference in FILE (one per line), all or nothing: each block that loses "
                        "records is re-encrypted once; a reference not enrolled, or listed twice, refuses the "
                        "whole file (named with its row, from 0) and nothing changes")
    add_key_service_arg(p)
    p.set_defaults(check=functools.partial(_check_remove, p))


def _add_info(verbs: Verbs) -> None:
    p = verbs.add("info", _cmd_info, "show a state's settings, gallery size and roster")
    p.add_argument("dir")


def _add_audit(verbs: Verbs) -> None:
    audit = verbs.group("audit", "check or show the audit log", dest="audit_verb", metavar="ACTION")
    p = audit.add("verify", _cmd_audit_verify, "verify the hash chain, the signed checkpoints and the signed head "
                                               "(of a split state: its key service's log too)")
    p.add_argument("dir")
    p.add_argument("--keydir", default=None, metavar="KEYDIR",
                   help="a split state's key-service directory, if on this host (default: found from the "
                        "address recorded at split)")
    p = audit.add("show", _cmd_audit_show, "list the entries, checkpoints included")
    p.add_argument("dir")


# Verb name -> the function adding it; pprm.cli.main chooses the order.
VERBS: dict[str, AddVerb] = {
    "init": _add_init,
    "card": _add_card,
    "trust": _add_trust,
    "enroll": _add_enroll,
    "remove": _add_remove,
    "info": _add_info,
    "audit": _add_audit,
}
