"""Kernel timings per backend (pprm.bench.kernel): what ``pprm bench`` records, and the command's arguments."""

from __future__ import annotations

import pytest

from pprm.bench.kernel import mac_figures, main, plain_mac_figures
from pprm.crypto import blind_params as blind_param_sets
from pprm.crypto import params as param_sets
from pprm.matching import kernel
from tests.helpers import INSECURE_BLIND, INSECURE_SEALED


def test_mac_figures_cover_the_active_backend_and_the_numpy_reference() -> None:
    ps = param_sets.get(INSECURE_SEALED, allow_insecure=True)
    k = mac_figures(ps, rounds=2)
    assert k["block_shape"] == [512, 2, 1, 1024] and k["templates_per_block"] == ps.templates_per_block
    assert "numpy" in k["backends"] and (kernel.backend() != "native" or "native" in k["backends"])
    for fig in k["backends"].values():
        assert fig["ms_per_block"] > 0 and fig["gmac_per_s"] > 0 and fig["gb_per_s"] > 0
        # Internal consistency: bytes / time and mult-accs / time describe the same call.
        assert fig["gb_per_s"] == pytest.approx(fig["gmac_per_s"] * 8, rel=1e-9)


def test_plain_mac_figures_time_one_block_of_diagonals() -> None:
    ps = blind_param_sets.get(INSECURE_BLIND, allow_insecure=True)
    k = plain_mac_figures(ps, rounds=1)
    assert k["pts_shape"][:2] == [ps.giant_steps, ps.baby_steps] and k["cts_shape"][:2] == [ps.baby_steps, 2]
    assert k["templates_per_block"] == ps.templates_per_block
    assert set(k["backends"]) == ({"numpy", "native"} if kernel.backend() == "native" else {"numpy"})
    for fig in k["backends"].values():
        # Two multiply-accumulates (one per ciphertext polynomial) per 8-byte plaintext residue read.
        assert fig["gb_per_s"] == pytest.approx(fig["gmac_per_s"] * 4, rel=1e-9)


def test_the_command_takes_its_documented_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m pprm.bench.kernel")
    assert "--blocks" in out and "--repeat" in out and "--plain-only" in out
