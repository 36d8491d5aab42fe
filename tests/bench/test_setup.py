"""The scratch states and gallery every benchmark starts from (pprm.bench.setup), in both profiles."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pprm.bench.setup import INSECURE_SEALED, build_setup, check_sizes, near_threshold_probe, sealed_params_for
from pprm.crypto import keys
from pprm.crypto import params as param_sets
from pprm.errors import ParameterError
from pprm.matching.decide import SealedDecider
from pprm.synthetic import make_gallery
from tests.helpers import INSECURE_BLIND, PROD_BLIND


def test_near_threshold_probe_lands_near_tau():
    g = make_gallery(2000, seed=3)
    rng = np.random.default_rng(5)
    probe = near_threshold_probe(g.templates, rng, 0.4)
    assert probe.dtype == np.float32
    assert np.linalg.norm(probe) == pytest.approx(1.0, abs=1e-6)
    s = g.templates.astype(np.float64) @ probe.astype(np.float64)
    near = np.abs(s - 0.4) < 0.1
    assert near.sum() >= 4
    assert np.sort(s)[-7] < 0.25  # only the blended templates score high


def test_setup_maps_record_ids_to_rows(tmp_path):
    setup = build_setup(40, INSECURE_SEALED, allow_insecure=True, root=str(tmp_path))
    try:
        kind, probe = setup.probe(0)
        assert kind == "mate"
        s = setup.scores(probe)
        best = int(np.argmax(s))
        st = setup.responder
        result = st.matcher().match(probe, st.config.threshold)
        decider = SealedDecider(st.ctx, keys.load_secret_key(st.ctx, st.secret_key_path()), st.gallery())
        mask = setup.hit_mask(decider.hits(result))
        assert mask[best] and mask.sum() == (s >= 0.4).sum()
    finally:
        setup.close()
    assert os.listdir(tmp_path) == []




def test_blind_setup_carries_the_blind_set_and_builds_its_database(tmp_path) -> None:
    messages: list[str] = []
    setup = build_setup(40, INSECURE_BLIND, profile="blind", allow_insecure=True, root=str(tmp_path),
                        progress=messages.append)
    try:
        assert setup.profile == "blind" and len(setup) == 40
        for st in (setup.responder, setup.requester):
            assert st.config.blind_params == INSECURE_BLIND and st.config.params == INSECURE_SEALED
        assert setup.requester.config.name in setup.responder.roster()
        assert setup.database_seconds is None
        seconds, export_seconds = setup.build_database()
        assert setup.database_seconds == seconds and 0 < export_seconds <= seconds
        assert any("enrolled" in m for m in messages)
    finally:
        setup.close()
    assert os.listdir(tmp_path) == []


def test_sealed_set_of_a_blind_benchmark() -> None:
    assert sealed_params_for(INSECURE_BLIND, allow_insecure=True) == INSECURE_SEALED
    assert sealed_params_for(INSECURE_BLIND, allow_insecure=False) == param_sets.DEFAULT_PARAMS
    assert sealed_params_for(PROD_BLIND, allow_insecure=True) == param_sets.DEFAULT_PARAMS


def test_refuses_bad_sizes_and_sets(tmp_path) -> None:
    check_sizes([1, 10])
    for bad in ([], [0], [5, -1]):
        with pytest.raises(ParameterError):
            check_sizes(bad)
    with pytest.raises(ParameterError):
        build_setup(0, INSECURE_SEALED, allow_insecure=True, root=str(tmp_path))
    with pytest.raises(ParameterError):
        build_setup(10, INSECURE_SEALED, root=str(tmp_path))  # insecure set without allow_insecure
    with pytest.raises(ParameterError):
        build_setup(10, INSECURE_BLIND, profile="blind", root=str(tmp_path))
    assert os.listdir(tmp_path) == []
