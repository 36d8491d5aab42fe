"""The shard specs a state hands the cluster: checked public material, never the state itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from pprm.cluster import BlindShardSpec, SealedShardSpec
from pprm.errors import StateError
from tests.helpers import INSECURE_BLIND, INSECURE_SEALED, INSECURE_SEALED_COMPLEX, new_state


def test_a_complex_packing_spec_carries_the_checked_conjugation_key(tmp_path: Path) -> None:
    a = new_state(tmp_path / "a", "FR", params=INSECURE_SEALED_COMPLEX, dim=16)
    b = new_state(tmp_path / "b", "DE", params=INSECURE_SEALED_COMPLEX, dim=16)
    spec = a.sealed_shard_spec()
    assert spec == SealedShardSpec(INSECURE_SEALED_COMPLEX, True, 16, a.key_id,
                                   (tmp_path / "a" / "ckks" / "galois.key").read_bytes())
    assert spec.conjugation_key and "conjugation_key" not in repr(spec)
    # Another state's (valid) conjugation key is refused, as State.conjugation_key refuses it.
    (tmp_path / "a" / "ckks" / "galois.key").write_bytes((tmp_path / "b" / "ckks" / "galois.key").read_bytes())
    with pytest.raises(StateError, match="key id"):
        a.sealed_shard_spec()
    (tmp_path / "a" / "ckks" / "galois.key").unlink()
    with pytest.raises(StateError, match="missing"):
        a.sealed_shard_spec()
    assert b.sealed_shard_spec().key_id == b.key_id


def test_a_real_packing_spec_has_no_conjugation_key(tmp_path: Path) -> None:
    st = new_state(tmp_path / "s", "FR", params=INSECURE_SEALED, blind_params=INSECURE_BLIND)
    assert st.sealed_shard_spec() == SealedShardSpec(INSECURE_SEALED, True, 512, st.key_id, b"")
    assert st.blind_shard_spec() == BlindShardSpec(INSECURE_BLIND, True)
