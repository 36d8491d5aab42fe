"""Splitting a state into a front and a key service, and joining them again.

``pprm init`` makes one self-contained directory: convenient for development,
but the process that faces the network then holds every secret. A split
moves the secret material into a key-service directory (KEYDIR), which may
live on another host::

    DIR/ (front)                         KEYDIR/ (key service)
      state.json, card.json, ckks/         state.json, card.json, ckks/, roster/ (copies)
      roster/, state.db (outbox, ...)      keyservice.json    {role, state, gallery, front's keys}
      private/identity.key                 private/identity.key  key service's Ed25519 seed
      private/blind/KEY.sk (requester)                            | the state's X25519 secret
      gallery/  (written by the key          private/ckks-secret.key, token.key, blind.key
                 service, read by the front) blind/  (responder side: the plaintext database)
      keyservice.json  {role, address,     state.db (replay, quota), outcomes.json
                        key service's keys} audit.log, audit.head (signed by the key service)
      audit.log, audit.head

Both sides pin the other's public keys here (:mod:`pprm.node.keylink`). The
key service keeps the state's X25519 secret so that it can open the queries
it verifies itself; it never has the state's signing key, and the front never
again has the CKKS secret key, the token key or the blind database.

Both operations are resumable: each step is atomic and checks what the
previous run did, so an interrupted split or join is finished by running it
again, and nothing is lost at any point (the secrets are deleted from the
source only once the destination holds them durably).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass

from pprm._fs import atomic_write_bytes, atomic_write_json, read_json
from pprm.crypto.identity import Identity, PublicIdentity
from pprm.errors import StateError
from pprm.node.audit import AuditLog
from pprm.node.config import policy_digest, policy_text
from pprm.node.policy import QuotaLedger
from pprm.node.state import State
from pprm.protocol.replay import ReplayCache

__all__ = ["FrontPin", "KeyServicePin", "split", "join", "front_pin", "keyservice_pin", "keyservice_logs",
           "archived_keyservice_logs", "SECRET_FILES", "DEFAULT_SOCKET"]

FORMAT = "pprm-split/1"
PIN_FILE = "keyservice.json"
# The key service's secrets, relative to a state directory; none stays in DIR.
SECRET_FILES = ("private/ckks-secret.key", "private/token.key", "private/blind.key")
# Responder-side blind profile (announced keys, answers, the sealed plaintext database).
BLIND_DIR = "blind"
DEFAULT_SOCKET = "keyservice.sock"


@dataclass(frozen=True)
class FrontPin:
    """What a split front knows of its key service (``DIR/keyservice.json``).

    Attributes:
        address: where the key service listens by default.
        keyservice: its pinned public identity.
    """

    address: str
    keyservice: PublicIdentity


@dataclass(frozen=True)
class KeyServicePin:
    """What a key service knows of its front (``KEYDIR/keyservice.json``).

    Attributes:
        state: the state's code.
        gallery: the gallery directory it writes and the front reads.
        front: the front's pinned public identity (the state's own).
    """

    state: str
    gallery: str
    front: PublicIdentity


def _identity_json(ident: PublicIdentity) -> dict[str, str]:
    return {"name": ident.name, "verify": ident.verify_key.hex(), "box": ident.box_key.hex()}


def _identity_from(obj: object, what: str) -> PublicIdentity:
    try:
        assert isinstance(obj, dict)
        return PublicIdentity(str(obj["name"]), bytes.fromhex(obj["verify"]), bytes.fromhex(obj["box"]))
    except (AssertionError, KeyError, TypeError, ValueError):
        raise StateError(f"{what} is corrupt") from None


def front_pin(directory: str) -> FrontPin | None:
    """The key-service pin of a split front, or None if the directory is not split (or is a key service's).

    Raises:
        StateError: the pin file is corrupt.
    """
    path = os.path.join(directory, PIN_FILE)
    if not os.path.exists(path):
        return None
    try:
        obj = read_json(path)
        if obj.get("format") == FORMAT and obj.get("role") == "keyservice":
            return None  # a key-service directory: it holds the secrets itself
        if obj.get("format") != FORMAT or obj.get("role") != "front":
            raise StateError(f"{path} is not a front's key-service pin")
        return FrontPin(str(obj["address"]), _identity_from(obj["keyservice"], path))
    except (ValueError, KeyError, AttributeError):
        raise StateError(f"{path} is corrupt") from None


def keyservice_pin(keydir: str) -> KeyServicePin:
    """The front pin of a key-service directory.

    Raises:
        StateError: not a key-service directory.
    """
    path = os.path.join(keydir, PIN_FILE)
    try:
        obj = read_json(path)
    except OSError:
        raise StateError(f"{keydir} is not a key-service directory (no {PIN_FILE})") from None
    except ValueError:
        raise StateError(f"{path} is corrupt") from None
    try:
        if obj.get("format") != FORMAT or obj.get("role") != "keyservice":
            raise StateError(f"{keydir} is not a key-service directory")
        return KeyServicePin(str(obj["state"]), str(obj["gallery"]), _identity_from(obj["front"], path))
    except (KeyError, AttributeError):
        raise StateError(f"{path} is corrupt") from None


def _ks_identity(keydir: str, name: str) -> Identity:
    raw = _read_secret(os.path.join(keydir, "private", "identity.key"))
    if len(raw) != 64:
        raise StateError("key-service identity file is malformed")
    return Identity(name, raw[:32], raw[32:])


def _read_secret(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _copy_private(src: str, dst: str) -> None:
    atomic_write_bytes(dst, _read_secret(src), mode=0o600)


def _copytree(src: str, dst: str) -> None:
    shutil.copytree(src, dst, copy_function=shutil.copy2)


def split(directory: str, keydir: str, *, address: str | None = None) -> FrontPin:
    """Move a state's secret material into a new key-service directory.

    Args:
        directory: a state made by ``pprm init`` (or one whose split was
            interrupted: the split is finished).
        keydir: the key-service directory to create (must not exist, or be
            empty, or be this state's half-made key-service directory).
        address: where the key service will listen (default: the unix socket
            ``KEYDIR/keyservice.sock``), recorded in DIR as the default for
            every verb that needs it.

    Returns:
        The front's pin.

    Raises:
        StateError: DIR is not a state, is split already to another KEYDIR,
            or KEYDIR exists with other content.

    Warning:
        The front keeps the gallery directory and reads it; the key service
        writes it. On two hosts the gallery must be shared so that only the
        key-service host can write it (e.g. exported read-only to the front).
        The key service gets the state's X25519 secret (to open queries it
        verifies itself), never its signing key.
    """
    st = State.open(directory)
    directory = st.dir
    keydir = os.path.abspath(keydir)
    if os.path.commonpath([directory, keydir]) in (directory, keydir):
        raise StateError("the key-service directory must lie outside the state directory (and not contain it)")
    name = st.config.name
    pin = front_pin(directory)
    if pin is None:
        with st.lock():
            if not _is_our_keydir(keydir, st):
                if os.path.exists(keydir) and os.listdir(keydir):
                    raise StateError(f"{keydir} exists and is not empty")
                _build_keydir(st, keydir)
            ks = _ks_identity(keydir, name).public
            addr = address or os.path.join(keydir, DEFAULT_SOCKET)
            last = st.audit.entries()[-1:] if os.path.exists(st.path("audit.log")) else []
            fpr = ks.fingerprint.hex()
            if not (last and last[0]["event"] == "split" and last[0]["data"].get("keyservice") == fpr):
                # Logged before the pin makes DIR a front (write-ahead, as every change).
                st.audit.append("split", keyservice=fpr)
            atomic_write_json(st.path(PIN_FILE), {"format": FORMAT, "role": "front", "address": addr,
                                                  "keyservice": _identity_json(ks)}, mode=0o644)
            pin = FrontPin(addr, ks)
    elif not _is_our_keydir(keydir, st):
        raise StateError(f"{directory} is split already, and {keydir} is not its key-service directory")
    # Only now that KEYDIR holds every secret durably, and DIR is a front:
    # delete them here (again, if a previous run was interrupted midway).
    _delete_secrets(st)
    return pin


def _delete_secrets(st: State) -> None:
    """Remove the key service's material from a front's directory (idempotent)."""
    for rel in SECRET_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(st.path(*rel.split("/")))
    if os.path.isdir(st.path(BLIND_DIR)):
        shutil.rmtree(st.path(BLIND_DIR))


def _is_our_keydir(keydir: str, st: State) -> bool:
    """Whether ``keydir`` is a complete key-service directory of this state."""
    if not os.path.exists(os.path.join(keydir, PIN_FILE)):
        return False
    pin = keyservice_pin(keydir)
    if pin.state != st.config.name or pin.front.verify_key != st.card.identity.verify_key:
        raise StateError(f"{keydir} is the key-service directory of another state")
    return all(os.path.exists(os.path.join(keydir, *rel.split("/"))) for rel in SECRET_FILES[:2])


def _build_keydir(st: State, keydir: str) -> None:
    """Make KEYDIR in a sibling temp directory, then rename it into place (caller holds DIR's lock)."""
    parent = os.path.dirname(keydir)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(keydir)}.split-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        for rel in ("state.json", "card.json"):
            shutil.copy2(st.path(rel), os.path.join(tmp, rel))
        for sub in ("ckks", "roster"):
            _copytree(st.path(sub), os.path.join(tmp, sub))
        os.makedirs(os.path.join(tmp, "private"), mode=0o700)
        os.chmod(os.path.join(tmp, "private"), 0o700)
        # The key service signs with its own key; it opens boxes addressed to the state.
        ks_seed = Identity.generate(st.config.name).signing_seed
        state_ident = st.identity()
        atomic_write_bytes(os.path.join(tmp, "private", "identity.key"), ks_seed + state_ident.box_secret, mode=0o600)
        st.blind_store  # noqa: B018 -- the blind key is created on first use; make sure it exists to move it
        st._blind_box_key()
        for rel in SECRET_FILES:
            _copy_private(st.path(*rel.split("/")), os.path.join(tmp, *rel.split("/")))
        if os.path.isdir(st.path(BLIND_DIR)):
            _copytree(st.path(BLIND_DIR), os.path.join(tmp, BLIND_DIR))
        # The key service refuses what the state had seen, and counts what it had answered
        # (rows of DIR/state.db; the front's outbox stays in DIR).
        ReplayCache(os.path.join(tmp, "replay.json")).merge(ReplayCache(st.path("replay.json")).entries())
        QuotaLedger(os.path.join(tmp, "quota.json")).merge(QuotaLedger(st.path("quota.json")).entries())
        ks = Identity(st.config.name, ks_seed, state_ident.box_secret)
        atomic_write_json(os.path.join(tmp, PIN_FILE), {
            "format": FORMAT, "role": "keyservice", "state": st.config.name, "gallery": st.path("gallery"),
            "front": _identity_json(st.card.identity)}, mode=0o644)
        log = AuditLog(os.path.join(tmp, "audit.log"), signer=ks.sign, public=ks.public)
        log.append("split", state=st.config.name, front=st.card.identity.fingerprint.hex(),
                   gallery=st.gallery().version)
        # The key service enforces its own copy of the policy (k, quotas,
        # purposes, TTLs, the blind threshold): recorded under its own signed
        # head, so a hand edit of KEYDIR/state.json is refused at its start.
        log.append("policy", policy=policy_text(st.config), policy_digest=policy_digest(st.config), source="split")
        os.rename(tmp, keydir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def join(directory: str, keydir: str) -> None:
    """Bring a key service's secret material back into its front's directory (undo :func:`split`).

    The key service must not be running. Its audit log is kept, with its
    signed head and public key, under ``DIR/keyservice-audit/FINGERPRINT/``,
    where ``pprm audit verify DIR`` checks it.

    Args:
        directory: a split state (or one whose join was interrupted).
        keydir: its key-service directory.

    Raises:
        StateError: DIR is not split to this KEYDIR, or the key service is running.
    """
    st = State.open(directory)
    pin = front_pin(st.dir)
    keydir = os.path.abspath(keydir)
    if pin is None:
        # Joined already; a previous run may have stopped before removing KEYDIR.
        if os.path.exists(os.path.join(keydir, PIN_FILE)) and _is_our_keydir(keydir, st) and all(
                os.path.exists(st.path(*rel.split("/"))) for rel in SECRET_FILES):
            shutil.rmtree(keydir)
            return
        raise StateError(f"{directory} is not split")
    ks_pin = keyservice_pin(keydir)
    ks = _ks_identity(keydir, st.config.name)
    if ks.public.verify_key != pin.keyservice.verify_key or ks_pin.state != st.config.name:
        raise StateError(f"{keydir} is not the key-service directory {directory} is split to")
    ks_state = State.open(keydir)
    with _serve_lock(keydir), st.lock():
        for rel in SECRET_FILES:
            _copy_private(ks_state.path(*rel.split("/")), st.path(*rel.split("/")))
        if os.path.isdir(ks_state.path(BLIND_DIR)):
            tmp = st.path(f".{BLIND_DIR}.join")
            shutil.rmtree(tmp, ignore_errors=True)
            _copytree(ks_state.path(BLIND_DIR), tmp)
            if os.path.isdir(st.path(BLIND_DIR)):
                shutil.rmtree(st.path(BLIND_DIR))
            os.rename(tmp, st.path(BLIND_DIR))
        # Both sides refused what either had seen: the union.
        ReplayCache(st.path("replay.json")).merge(ReplayCache(ks_state.path("replay.json")).entries())
        archive = st.path("keyservice-audit", pin.keyservice.fingerprint.hex())
        os.makedirs(archive, exist_ok=True)
        for name in ("audit.log", "audit.head"):
            if os.path.exists(ks_state.path(name)):
                atomic_write_bytes(os.path.join(archive, name), _read_secret(ks_state.path(name)), mode=0o600)
        atomic_write_json(os.path.join(archive, "keyservice.json"), _identity_json(pin.keyservice), mode=0o644)
        st.audit.append("join", keyservice=pin.keyservice.fingerprint.hex())
        os.unlink(st.path(PIN_FILE))
    shutil.rmtree(keydir)


@contextlib.contextmanager
def _serve_lock(keydir: str):  # type: ignore[no-untyped-def]
    """Hold the key service's serve lock (refuse while it runs)."""
    import fcntl

    fd = os.open(os.path.join(keydir, ".serve.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateError(f"the key service on {keydir} is running; stop it first") from None
        yield
    finally:
        os.close(fd)


def keyservice_logs(directory: str, keydir: str | None = None) -> list[tuple[str, AuditLog]]:
    """The key-service audit logs that belong with a state's own: to verify them together.

    Args:
        directory: a state directory.
        keydir: its key-service directory, if it is reachable from here
            (default: the directory of the default unix socket recorded at
            split time, when it exists on this host).

    Returns:
        ``(label, log)`` pairs: the live key service's log, then the logs a
        join kept in DIR.

    Raises:
        StateError: ``keydir`` is not the key service DIR is split to.
    """
    out: list[tuple[str, AuditLog]] = []
    pin = front_pin(directory)
    if keydir is None and pin is not None:
        guess = os.path.dirname(pin.address)
        if os.path.isabs(pin.address) and os.path.exists(os.path.join(guess, PIN_FILE)):
            keydir = guess
    if keydir is not None:
        ks_pin = keyservice_pin(keydir)
        ks_state = State.open(keydir)
        if pin is None or ks_state.identity().public.verify_key != pin.keyservice.verify_key:
            raise StateError(f"{keydir} is not the key service {directory} is split to")
        if ks_pin.state != ks_state.config.name:
            raise StateError(f"{keydir} is corrupt")
        out.append((f"key service {keydir}", ks_state.audit))
    out.extend((f"key service {fpr[:16]} (kept at join)", log) for fpr, log in archived_keyservice_logs(directory))
    return out


def archived_keyservice_logs(directory: str) -> list[tuple[str, AuditLog]]:
    """The key-service audit logs a join kept in DIR, each with its pinned public key.

    Returns:
        ``(fingerprint, log)`` pairs.
    """
    root = os.path.join(directory, "keyservice-audit")
    out = []
    if os.path.isdir(root):
        for fpr in sorted(os.listdir(root)):
            pub = _identity_from(read_json(os.path.join(root, fpr, "keyservice.json")), f"{root}/{fpr}")
            out.append((fpr, AuditLog(os.path.join(root, fpr, "audit.log"), public=pub)))
    return out
