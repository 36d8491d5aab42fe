"""The ``policy`` verb: show a state's policy, and change it, audited.

``pprm policy show DIR`` prints the settings of ``state.json`` that make up
the policy (:data:`pprm.node.config.POLICY_FIELDS`), their digest, and
whether they are the policy the audit log records under its signed head.
``pprm policy set DIR --k 20 ...`` changes them through
:func:`pprm.node.policy.set_policy`: validated like every setting, logged
(old and new values, new digest), then written. A bad value is one
``pprm: error:`` line and changes nothing.

With ``--json`` they print one object tagged ``"format": "pprm.policy.show/1"``
and ``"pprm.policy.set/1"`` (docs/JSON.md).
"""

from __future__ import annotations

import argparse
from typing import Any

from pprm.cli.common import EXIT_OK, AddVerb, Verbs, emit
from pprm.node.config import QUOTA_WINDOW
from pprm.node.policy import PolicyChange, PolicyReport, set_policy, show_policy
from pprm.node.state import State

__all__ = ["VERBS", "profile_setting"]

# Options of `policy set` -> the policy setting each one changes.
_OPTIONS = {"threshold": "threshold", "k": "k", "purposes": "purposes", "quota_per_case": "quota_per_case",
            "quota_per_peer": "quota_per_peer", "query_ttl": "query_ttl", "token_ttl": "token_ttl",
            "blind_key_ttl": "blind_key_ttl"}
_DEFAULT = "default"


def profile_setting(text: str) -> tuple[str, str | None]:
    """An argparse type: ``PEER=sealed``, ``PEER=blind`` or ``PEER=default``.

    Args:
        text: e.g. ``FR=blind``.

    Returns:
        ``(peer, profile)``; the profile is None for ``default`` (drop the
        peer's entry: it then gets ``sealed``).

    Raises:
        argparse.ArgumentTypeError: not of that form.
    """
    peer, sep, profile = text.partition("=")
    peer, profile = peer.strip(), profile.strip()
    if not sep or not peer or profile not in ("sealed", "blind", _DEFAULT):
        raise argparse.ArgumentTypeError(f"{text!r} is not PEER=sealed, PEER=blind or PEER={_DEFAULT}")
    return peer, None if profile == _DEFAULT else profile


def _purposes(text: str) -> list[str]:
    return [p.strip() for p in text.split(",")]


def _value(name: str, value: Any) -> str:
    """A setting's value for a reader."""
    if name == "purposes":
        return ", ".join(value)
    if name == "profiles":
        listed = ", ".join(f"{peer}={profile}" for peer, profile in sorted(value.items()))
        return f"{listed} (other peers: sealed)" if listed else "(none: every peer sealed)"
    if name.endswith("_ttl"):
        return f"{value} s"
    if name.startswith("quota_per_"):
        hours = QUOTA_WINDOW // 3600
        per = "per case and requesting state" if name == "quota_per_case" else "per requesting state"
        return f"{value} queries {per} in {hours} h"
    return str(value)


def _settings_lines(policy: dict[str, Any]) -> list[str]:
    width = max(len(name) for name in policy)
    return [f"  {name:<{width}}  {_value(name, value)}" for name, value in policy.items()]


def _report_json(rep: PolicyReport) -> dict[str, Any]:
    return {"state": rep.state, "policy": rep.policy, "digest": rep.digest,
            "audited_digest": rep.audited, "status": rep.status, "differs": list(rep.differs)}


def _cmd_show(args: argparse.Namespace) -> int:
    st = State.open(args.dir)
    rep = show_policy(st)
    if rep.status == "audited":
        standing = "the audited policy (its digest is under the signed audit head)"
    elif rep.status == "differs":
        which = f" in {', '.join(rep.differs)}" if rep.differs else ""
        standing = (f"DIFFERS from the audited policy{which}: the state refuses to answer until"
                    f" 'pprm policy set {args.dir}' records a policy (with no options: restores the audited one)")
    else:
        standing = (f"not recorded in the audit log yet (a state from before policies were audited);"
                    f" 'pprm policy set {args.dir}' records it")
    emit(args, _report_json(rep), "\n".join([
        f"policy of {rep.state}",
        *_settings_lines(rep.policy),
        f"digest  {rep.digest}",
        f"status  {standing}",
    ]))
    return EXIT_OK


def _change_json(change: PolicyChange) -> dict[str, Any]:
    return {"state": change.state, "policy": change.policy, "digest": change.digest,
            "previous_digest": change.previous, "recorded": change.recorded,
            "changed": {name: {"old": old, "new": new} for name, (old, new) in change.changed.items()},
            "restored": list(change.restored)}


def _cmd_set(args: argparse.Namespace) -> int:
    changes: dict[str, Any] = {setting: getattr(args, option) for option, setting in _OPTIONS.items()
                               if getattr(args, option) is not None}
    profiles = dict(args.profiles) if args.profiles else None
    st = State.open(args.dir)
    change = set_policy(st, profile_changes=profiles, **changes)
    if not change.recorded:
        head = f"policy of {change.state} unchanged; nothing recorded"
    elif change.previous is None:
        head = f"policy of {change.state} recorded in the audit log for the first time"
    elif change.changed:
        head = f"policy of {change.state} changed and recorded in the audit log"
    else:
        head = f"policy of {change.state} restored to the audited one and recorded in the audit log"
    lines = [head]
    lines += [f"  {name}: {_value(name, old)} -> {_value(name, new)}" for name, (old, new) in change.changed.items()]
    if change.restored:
        lines.append(f"  restored from the audit log (state.json held other values): {', '.join(change.restored)}")
    lines.append(f"digest  {change.digest}")
    if change.recorded:
        lines.append("a running 'pprm serve' keeps the policy it started with until it is restarted")
    emit(args, _change_json(change), "\n".join(lines))
    return EXIT_OK


def _add_policy(verbs: Verbs) -> None:
    policy = verbs.group("policy", "show or change a state's policy (audited)", dest="policy_verb",
                         metavar="ACTION")
    p = policy.add("show", _cmd_show, "print the policy, its digest, and whether it is the audited one")
    p.add_argument("dir")
    p = policy.add("set", _cmd_set, "change policy settings: validated, recorded in the audit log (old and new "
                                    "values, new digest), then written to state.json; with no options, writes "
                                    "the audited policy back (a state whose log records none yet: records the "
                                    "one in state.json)")
    p.add_argument("dir")
    p.add_argument("--threshold", type=float, default=None, help="decision threshold, 0.05 to 0.95")
    p.add_argument("--k", type=int, default=None, help="candidate cap per query, 1 to 1000")
    p.add_argument("--purposes", type=_purposes, default=None, metavar="P1,P2,...",
                   help="the purposes this state answers and sends queries for (replaces the list)")
    p.add_argument("--quota-per-case", dest="quota_per_case", type=int, default=None, metavar="N",
                   help="queries answered per requesting state and case in 24 h")
    p.add_argument("--quota-per-peer", dest="quota_per_peer", type=int, default=None, metavar="N",
                   help="queries answered per requesting state in 24 h")
    p.add_argument("--profile", dest="profiles", type=profile_setting, action="append", metavar="PEER=PROFILE",
                   help="default query profile towards PEER: sealed, blind, or default (drop the entry: "
                        "sealed) (repeatable)")
    p.add_argument("--query-ttl", dest="query_ttl", type=int, default=None, metavar="SECONDS",
                   help="lifetime of a query or follow-up this state sends, 60 s to 7 days")
    p.add_argument("--token-ttl", dest="token_ttl", type=int, default=None, metavar="SECONDS",
                   help="how long a released candidate can be followed up, 1 h to 31 days")
    p.add_argument("--blind-key-ttl", dest="blind_key_ttl", type=int, default=None, metavar="SECONDS",
                   help="lifetime of a blind-profile key pair, 60 s to 31 days")


# Verb name -> the function adding it; pprm.cli.main chooses the order.
VERBS: dict[str, AddVerb] = {"policy": _add_policy}
