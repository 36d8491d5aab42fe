"""State directories: layout, permissions, secrets kept in private/, and safe failure."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest
import zstandard

from pprm import synthetic
from pprm.crypto import keys
from pprm.errors import MessageError, ParameterError, StateError, UnknownPeerError
from pprm.node import state as state_module
from pprm.node.keyservice import KeyService
from pprm.node.requester import Requester
from pprm.node.responder import Responder
from pprm.node.state import State
from pprm.protocol.canonical import b64
from pprm.protocol.tokens import TokenMinter
from tests.helpers import INSECURE_SEALED, leak_forms, new_state, snapshot, windows

PRIVATE_FILES = {"identity.key", "ckks-secret.key", "token.key"}


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _files(directory: str) -> dict[str, bytes]:
    out = {}
    for root, _dirs, files in os.walk(directory):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, directory)] = fh.read()
    return out


def test_init_creates_the_layout(tmp_path: Path) -> None:
    st = new_state(str(tmp_path / "de"), "DE", threshold=0.45, k=7, dim=128)
    assert st.dir == str(tmp_path / "de")
    files = set(_files(st.dir))
    assert files == {"state.json", "card.json", "audit.log", "audit.head", "ckks/public.key",
                     *(f"private/{f}" for f in PRIVATE_FILES)}
    for d in ("ckks", "roster", "gallery", "private"):
        assert os.path.isdir(st.path(d))
    assert (st.config.name, st.config.threshold, st.config.k, st.config.dim) == ("DE", 0.45, 7, 128)
    assert st.card.name == "DE" and st.card.dim == 128
    assert st.card.key_id == keys.key_id_of(_files(st.dir)["ckks/public.key"])
    assert st.roster() == {}
    assert len(st.gallery()) == 0
    assert [e["event"] for e in st.audit.entries()] == ["init"]
    assert st.audit.verify() == 2  # init and the checkpoint where signing starts
    with open(st.path("state.json")) as fh:
        assert json.load(fh)["format"] == "pprm-state/1"
    # Reopening gives the same configuration.
    assert State.open(st.dir).config == st.config


def test_private_permissions_even_with_a_lax_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        st = new_state(str(tmp_path / "de"), "DE")
    finally:
        os.umask(old)
    assert _mode(st.path("private")) == 0o700
    assert set(os.listdir(st.path("private"))) == PRIVATE_FILES
    for f in PRIVATE_FILES:
        assert _mode(st.path("private", f)) == 0o600, f
    assert _mode(st.secret_key_path()) == 0o600
    assert _mode(st.path("audit.log")) == 0o600


def _secret_key_needles(blob: bytes) -> tuple[list[bytes], list[bytes]]:
    """(raw windows, text-encoded windows) of a SEAL secret key file, compressed and not."""
    raw = windows(blob, 24, 96, skip=16)
    if blob[5] == 2:  # SEAL header compression mode 2: zstd
        plain = zstandard.ZstdDecompressor().decompressobj().decompress(blob[16:])
        # Past the members' header (parms_id, sizes), which equal states share.
        raw += windows(plain, 24, 96, skip=128)
    text = [form for w in raw[::4] for form in leak_forms(w)[1:]]
    return raw, text


def test_secrets_appear_nowhere_outside_private(tmp_path: Path) -> None:
    # Use the state fully first, so every kind of file exists.
    nodes = {}
    for name in ("DE", "FR"):
        nodes[name] = new_state(str(tmp_path / name), name)
    de, fr = nodes["DE"], nodes["FR"]
    de.trust(fr.card_bytes)
    fr.trust(de.card_bytes)
    gal = synthetic.make_gallery(40, seed=9, prefix="DE")
    KeyService(de).enroll(gal.templates, gal.references)
    q = Requester(fr).query("DE", synthetic.mate_probe(gal, 3, 1), "C-1", "serious-crime")
    answer = Responder(de).answer(q)
    opened = Requester(fr).open(answer)
    KeyService(de).resolve(Requester(fr).follow_up(answer, opened.candidates[0]))

    files = _files(de.dir) | {f"../FR/{k}": v for k, v in _files(fr.dir).items()}
    private = {k: v for k, v in files.items() if k.startswith("private/")}
    public = {k: v for k, v in files.items() if "private/" not in k}
    assert any(k.startswith("gallery/blocks/") for k in public)
    small = {k: v for k, v in public.items() if len(v) < 1 << 20}

    raw, text = _secret_key_needles(private["private/ckks-secret.key"])
    assert len(raw) > 50
    leaks = [k for k, v in public.items() if any(n in v for n in raw)]
    leaks += [k for k, v in small.items() if any(n in v for n in text)]
    ident = private["private/identity.key"]
    small_secrets = [ident[:32], ident[32:], private["private/token.key"]]
    for s in small_secrets:
        leaks += [k for k, v in public.items() if s in v]
        leaks += [k for k, v in small.items() if any(f in v for f in leak_forms(s))]
    assert leaks == []


def test_init_into_non_empty_dir_changes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    before = snapshot(str(tmp_path))
    with pytest.raises(StateError, match="not empty"):
        new_state(str(target), "DE")
    assert snapshot(str(tmp_path)) == before
    # Not even over an existing state.
    new_state(str(tmp_path / "de"), "DE")
    before = snapshot(str(tmp_path))
    with pytest.raises(StateError):
        new_state(str(tmp_path / "de"), "DE")
    assert snapshot(str(tmp_path)) == before


def test_init_into_empty_existing_dir(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    st = new_state(str(tmp_path / "empty"), "DE")
    assert os.path.isfile(st.path("state.json"))
    assert sorted(os.listdir(tmp_path)) == ["empty"]


@pytest.mark.parametrize("victim", ["make_card", "AuditLog"])
def test_failed_init_leaves_no_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, victim: str) -> None:
    class Crash(Exception):
        pass

    def crash(*_a: object, **_k: object) -> None:
        raise Crash

    monkeypatch.setattr(state_module, victim, crash)
    (tmp_path / "other").write_text("x")
    before = snapshot(str(tmp_path))
    with pytest.raises(Crash):
        new_state(str(tmp_path / "de"), "DE")
    assert snapshot(str(tmp_path)) == before


def test_failed_key_generation_leaves_no_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*_a: object) -> None:
        raise RuntimeError("no entropy today")

    monkeypatch.setattr("pprm.node.state.keys.generate", crash)
    with pytest.raises(RuntimeError):
        new_state(str(tmp_path / "de"), "DE")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kwargs", [{"k": 0}, {"threshold": 0.99}, {"dim": 8}, {"params": "nope"}])
def test_invalid_settings_create_nothing(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ParameterError):
        new_state(tmp_path / "de", "DE", **kwargs)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("name", "kwargs", "field"), [
    ("DE", {"threshold": "high"}, "threshold"),
    ("DE", {"threshold": None}, "threshold"),
    ("DE", {"k": "10"}, "k"),
    ("DE", {"k": 10.0}, "k"),
    ("DE", {"dim": "512"}, "dim"),
    ("DE", {"params": 5}, "params"),
    ("DE", {"params": ["x"]}, "params"),
    ("DE", {"blind_params": 5}, "blind_params"),
    ("DE", {"allow_insecure": "yes"}, "allow_insecure"),
    ("DE", {"profiles": [1]}, "profiles"),
    ("DE", {"profiles": "blind"}, "profiles"),
    ("DE", {"purposes": 5}, "purposes"),
    ("DE", {"purposes": "serious-crime"}, "purposes"),
    ("DE", {"quota_per_case": "100"}, "quota_per_case"),
    ("DE", {"quota_per_peer": 1.5}, "quota_per_peer"),
    (5, {}, "name"),
    (None, {}, "name"),
])
def test_a_setting_of_the_wrong_type_is_a_parameter_error_naming_it(
    tmp_path: Path, name: object, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ParameterError) as info:
        new_state(tmp_path / "de", name, **kwargs)  # type: ignore[arg-type]
    msg = str(info.value)
    assert re.search(rf"\b{field}\b", msg) and "\n" not in msg, msg
    assert os.listdir(tmp_path) == []


def test_insecure_params_need_permission(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match=r"pass allow_insecure=True \(pprm init --allow-insecure\)"):
        State.init(str(tmp_path / "de"), "DE", params=INSECURE_SEALED)
    assert os.listdir(tmp_path) == []


def test_open_of_a_non_state_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StateError):
        State.open(str(tmp_path / "missing"))
    with pytest.raises(StateError):
        State.open(str(tmp_path))
    bad = tmp_path / "bad"
    bad.mkdir()
    for content in ("not json", "[]", '{"format": "pprm-state/9", "name": "DE"}',
                    '{"format": "pprm-state/1", "name": "DE", "threshold": 2.0}',
                    '{"format": "pprm-state/1", "name": "DE", "colour": "red"}', "{}"):
        (bad / "state.json").write_text(content)
        with pytest.raises(StateError):
            State.open(str(bad))


def test_reprs_hold_no_key_bytes(tmp_path: Path) -> None:
    st = new_state(str(tmp_path / "de"), "DE")
    ident = st.identity()
    secrets = [ident.signing_seed, ident.box_secret, st.token_key()]
    forms = set()
    for s in secrets:
        forms |= {f.decode() for f in leak_forms(s)[1:]}
        forms.add(b64(s))
        forms.add(repr(s))
    ks = KeyService(st)
    texts = [repr(st), str(st), repr(ident), str(ident), repr(ks), repr(TokenMinter(st.token_key())),
             repr(Requester(st)), repr(Responder(st)), repr(st.config), repr(ident.public)]
    assert [t for t in texts for f in forms if f in t] == []
    assert "signing_seed" not in repr(ident) and "box_secret" not in repr(ident)


def test_trusting_own_card_is_refused(tmp_path: Path) -> None:
    st = new_state(str(tmp_path / "de"), "DE")
    before = snapshot(st.dir)
    with pytest.raises(StateError, match="own"):
        st.trust(st.card_bytes)
    assert snapshot(st.dir) == before


def test_retrusting_with_other_keys_is_refused(tmp_path: Path) -> None:
    de = new_state(str(tmp_path / "de"), "DE")
    fr1 = new_state(str(tmp_path / "fr1"), "FR")
    fr2 = new_state(str(tmp_path / "fr2"), "FR")
    card = de.trust(fr1.card_bytes)
    assert card.identity == fr1.identity().public
    # The same card again is harmless (and logged).
    de.trust(fr1.card_bytes)
    before = snapshot(de.dir)
    with pytest.raises(StateError, match="other keys"):
        de.trust(fr2.card_bytes)
    assert snapshot(de.dir) == before
    assert de.peer("FR").identity == fr1.identity().public
    assert [e["event"] for e in de.audit.entries()] == ["init", "trust", "trust"]


def test_invalid_cards_change_nothing(tmp_path: Path) -> None:
    de = new_state(str(tmp_path / "de"), "DE")
    fr = new_state(str(tmp_path / "fr"), "FR")
    before = snapshot(de.dir)
    tampered = fr.card_bytes.replace(b'"dim":512', b'"dim":256')
    assert tampered != fr.card_bytes
    for bad in (tampered, b"", b"{}", fr.card_bytes[:-10]):
        with pytest.raises(MessageError):
            de.trust(bad)
    assert snapshot(de.dir) == before


def test_a_card_that_is_not_bytes_is_refused_in_one_line(tmp_path: Path) -> None:
    de = new_state(str(tmp_path / "de"), "DE")
    fr = new_state(str(tmp_path / "fr"), "FR")
    before = snapshot(de.dir)
    for bad in ("{}", fr.card_bytes.decode(), None, 5):
        with pytest.raises(MessageError, match=r"^a card must be bytes, got \w+") as info:
            de.trust(bad)  # type: ignore[arg-type]
        assert "\n" not in str(info.value)
    for bad_bytes in (b"{}", b"not json", b"\xff\xfe", bytearray(b"[]")):
        with pytest.raises(MessageError):
            de.trust(bad_bytes)
    assert snapshot(de.dir) == before
    # A bytes-like card is trusted, and stored as the bytes it was.
    assert de.trust(bytearray(fr.card_bytes)).name == "FR"
    with open(de.path("roster", "FR.card"), "rb") as fh:
        assert fh.read() == fr.card_bytes


def test_production_state_refuses_an_insecure_peer(tmp_path: Path) -> None:
    # Downgrade protection: a state on a real parameter set will not trust a
    # peer announcing a test-only set.
    prod = State.init(str(tmp_path / "de"), "DE")
    assert prod.config.params == "pprm-sealed-n8192-complex-v1"
    weak = new_state(str(tmp_path / "fr"), "FR")
    before = snapshot(prod.dir)
    with pytest.raises(ParameterError):
        prod.trust(weak.card_bytes)
    assert snapshot(prod.dir) == before


def test_roster_lookup(tmp_path: Path) -> None:
    de = new_state(str(tmp_path / "de"), "DE")
    fr = new_state(str(tmp_path / "fr"), "FR")
    with pytest.raises(UnknownPeerError):
        de.peer("FR")
    assert de.lookup(fr.identity().public.fingerprint) is None
    de.trust(fr.card_bytes)
    assert set(de.roster()) == {"FR"}
    assert de.lookup(fr.identity().public.fingerprint) == fr.identity().public
    assert de.lookup(de.identity().public.fingerprint) is None  # not in its own roster


@pytest.mark.parametrize("fname", sorted(PRIVATE_FILES))
def test_loose_private_file_modes_are_refused(tmp_path: Path, fname: str) -> None:
    st = new_state(str(tmp_path / "de"), "DE")
    # The identity is read per use; the key service reads the other two.
    use = st.identity if fname == "identity.key" else (lambda: _secrets_of(st))
    os.chmod(st.path("private", fname), 0o644)
    with pytest.raises(StateError, match="0600"):
        use()
    os.chmod(st.path("private", fname), 0o600)
    use()


@pytest.mark.parametrize("fname", sorted(PRIVATE_FILES))
def test_missing_or_malformed_private_files_are_refused(tmp_path: Path, fname: str) -> None:
    st = new_state(str(tmp_path / "de"), "DE")
    path = st.path("private", fname)
    with open(path, "rb") as fh:
        good = fh.read()
    use = st.identity if fname == "identity.key" else (lambda: _secrets_of(st))
    with open(path, "wb") as fh:
        fh.write(good[:-1])
    with pytest.raises(StateError):
        use()
    os.unlink(path)
    with pytest.raises(StateError, match="missing"):
        use()


def _secrets_of(st: State) -> None:
    """Make a key service read both of its secrets (it reads each on first use, not when built)."""
    ks = KeyService(st)
    assert ks._sk is not None and ks._minter is not None
