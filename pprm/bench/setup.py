"""The starting point of every benchmark: two scratch states and an enrolled synthetic gallery.

:func:`build_setup` creates, in a fresh scratch directory and through the
public API only, a responding state holding a synthetic gallery with planted
mates (:mod:`pprm.synthetic`) and a requesting state; each trusts the other.
The same function serves both profiles: for the blind profile the states
carry the blind parameter set being measured, and the gallery is enrolled
the same way (the blind database is derived from it, see
:meth:`BenchSetup.build_database`).

``pprm bench`` (:mod:`pprm.bench.sealed`, :mod:`pprm.bench.blind`) and the
pytest-benchmark suites in ``bench/`` build their galleries here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pprm.bench.report import Progress
from pprm.crypto import blind_params as blind_param_sets
from pprm.crypto import params as param_sets
from pprm.errors import ParameterError
from pprm.matching.templates import normalise_probe, normalise_templates
from pprm.node.config import MAX_QUOTA
from pprm.node.keyservice import KeyService
from pprm.node.state import State
from pprm.profile import Profile
from pprm.synthetic import SyntheticGallery, impostor_probe, make_gallery, mate_probe

__all__ = [
    "BenchSetup",
    "build_setup",
    "measure_sizes",
    "check_sizes",
    "near_threshold_probe",
    "sealed_params_for",
    "RESPONDER",
    "REQUESTER",
    "THRESHOLD",
    "DIM",
    "NEAR_BAND",
    "PROBE_KINDS",
    "INSECURE_SEALED",
]

RESPONDER = "RESPONDER"
REQUESTER = "REQUESTER"
# The library default; the synthetic score model (genuine 0.53-0.91,
# impostors 0 +- 0.044) is built around it.
THRESHOLD = 0.4
DIM = 512
# Pairs this close to tau are the ones that test precision; impostors at
# 0 +- 0.044 are nine sigma from tau and would pass any check.
NEAR_BAND = 0.05
# Probe kinds in rotation: blends put several pairs near tau per probe.
PROBE_KINDS = ("mate", "near", "impostor", "near")
# The sealed set the states carry when the blind set measured is a test-only one.
INSECURE_SEALED = "INSECURE-sealed-n1024"


def sealed_params_for(blind_params: str, allow_insecure: bool) -> str:
    """The sealed parameter set the states of a blind benchmark are created with.

    Args:
        blind_params: the blind set being measured.
        allow_insecure: whether ``INSECURE*`` sets are accepted.

    Returns:
        :data:`INSECURE_SEALED` for an insecure blind set when allowed (fast
        enrolment in smoke runs), else the library default sealed set.
    """
    if allow_insecure and blind_params.startswith("INSECURE"):
        return INSECURE_SEALED
    return param_sets.DEFAULT_PARAMS


def check_sizes(sizes: Sequence[int]) -> None:
    """Refuse an empty list of gallery sizes or a size below 1.

    Args:
        sizes: the gallery sizes of one benchmark run.

    Raises:
        ParameterError: no size, or a size below 1.
    """
    if not sizes or any(int(n) < 1 for n in sizes):
        raise ParameterError("benchmark sizes must be positive integers")


def near_threshold_probe(templates: np.ndarray, rng: np.random.Generator,
                         tau: float = THRESHOLD) -> np.ndarray:
    """A probe whose score with a few gallery templates lands near ``tau``.

    The probe is a weighted sum of ``m = round(1/tau**2)`` gallery templates:
    with nearly orthogonal templates each of them scores about
    ``a_i / sqrt(sum a_j**2)``, i.e. ``tau`` give or take a few hundredths.

    Args:
        templates: unit-norm gallery templates ``(n, d)``.
        rng: random source.
        tau: the threshold to aim at.

    Returns:
        A unit-norm float32 probe.
    """
    n = templates.shape[0]
    m = min(n, max(1, round(1.0 / tau**2)))
    rows = rng.choice(n, size=m, replace=False)
    weights = rng.uniform(0.85, 1.15, size=m)
    q = weights @ templates[rows].astype(np.float64)
    return (q / np.linalg.norm(q)).astype(np.float32)


@dataclass
class BenchSetup:
    """Two states, a responder with an enrolled synthetic gallery and a requester.

    Attributes:
        root: scratch directory holding both states.
        profile: the profile the setup was built for.
        responder: the state holding the gallery.
        requester: a state that trusts the responder (and is trusted by it).
        gallery: the synthetic gallery (plaintext, for ground truth only).
        templates: the gallery's templates as the library normalises them.
        rows: record id -> template row.
        enroll_seconds: wall time of the (sealed) enrolment.
        database_seconds: wall time of the last :meth:`build_database`
            (None before it ran).
    """

    root: str
    profile: Profile
    responder: State
    requester: State
    gallery: SyntheticGallery = field(repr=False)
    templates: np.ndarray = field(repr=False)
    rows: np.ndarray = field(repr=False)
    enroll_seconds: float
    database_seconds: float | None = None

    def __len__(self) -> int:
        return len(self.gallery)

    def probe(self, i: int, seed: int = 0) -> tuple[str, np.ndarray]:
        """The ``i``-th benchmark probe and its kind (mate, near or impostor).

        Args:
            i: probe number; kinds rotate through :data:`PROBE_KINDS`.
            seed: separates probe streams (timed queries vs agreement checks).

        Returns:
            ``(kind, probe)``.
        """
        kind = PROBE_KINDS[i % len(PROBE_KINDS)]
        rng = np.random.default_rng([0xBE, seed, i])
        if kind == "mate":
            return kind, mate_probe(self.gallery, int(rng.integers(len(self))), seed * 100_003 + i)
        if kind == "near":
            return kind, near_threshold_probe(self.templates, rng, self.responder.config.threshold)
        return kind, impostor_probe(self.templates.shape[1], seed * 100_003 + i)

    def scores(self, probe: np.ndarray) -> np.ndarray:
        """Plaintext truth: float64 scores of ``probe`` against every template, in row order.

        Args:
            probe: a template of the gallery's dimension.

        Returns:
            One score per gallery row.

        Raises:
            TemplateError: the probe has the wrong dimension or is not finite.
        """
        q = normalise_probe(probe, self.templates.shape[1]).astype(np.float64)
        return self.templates.astype(np.float64) @ q

    def hit_mask(self, record_ids: Sequence[int]) -> np.ndarray:
        """Bool per template row: True for the records the encrypted path decided as hits.

        Args:
            record_ids: the gallery record ids decided as hits.

        Returns:
            A bool array of one entry per gallery row.
        """
        mask = np.zeros(len(self), dtype=bool)
        mask[self.rows[np.asarray(list(record_ids), dtype=np.int64)]] = True
        return mask

    def stored_bytes(self) -> int:
        """Bytes of every file under the responder's gallery directory.

        Returns:
            The total size in bytes.
        """
        total = 0
        for dirpath, _dirs, files in os.walk(self.responder.path("gallery")):
            total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
        return total

    def ram_bytes(self) -> int:
        """Bytes of the residue arrays the sealed matcher reads per query (all blocks).

        Returns:
            The total size in bytes.
        """
        g = self.responder.gallery()
        return sum(int(g.block(b).nbytes) for b in range(len(g.index.blocks)))

    def build_database(self) -> tuple[float, float]:
        """Build (or fetch) the responder's blind database for the current gallery version.

        This is what the first blind answer does; calling it first keeps the
        build out of the timed queries. Records :attr:`database_seconds`.

        Returns:
            ``(seconds, export_seconds)``: the whole call (export the gallery,
            encode the diagonals, write them to disk) and the export alone.
        """
        st = self.responder
        ks = KeyService(st)
        export_s = [0.0]

        def export() -> tuple[np.ndarray, np.ndarray]:
            t = time.perf_counter()
            out = ks.export_templates()
            export_s[0] += time.perf_counter() - t
            return out

        t0 = time.perf_counter()
        st.blind_store.database(st.gallery().version, export)
        self.database_seconds = time.perf_counter() - t0
        return self.database_seconds, export_s[0]

    def close(self) -> None:
        """Delete the scratch directory (states, gallery, diagonals)."""
        shutil.rmtree(self.root, ignore_errors=True)


def build_setup(n: int, params: str | None = None, *, profile: Profile = "sealed", allow_insecure: bool = False,
                root: str | None = None, seed: int = 0, progress: Progress | None = None) -> BenchSetup:
    """Create the benchmark's two states and enrol ``n`` synthetic templates.

    The responder enrols through :meth:`pprm.node.keyservice.KeyService.enroll`
    with its quotas at their maximum, so that every timed query is answered.
    In the blind profile both states carry ``blind_params=params`` and the
    sealed set of :func:`sealed_params_for`; the blind database is not built
    here (see :meth:`BenchSetup.build_database`).

    Args:
        n: gallery size.
        params: parameter set of the profile (default: the library default
            of the profile).
        profile: ``sealed`` or ``blind``.
        allow_insecure: accept ``INSECURE*`` sets (tests only).
        root: parent directory for the scratch directory (default: system temp).
        seed: synthetic gallery seed.
        progress: receives one-line status messages.

    Returns:
        The setup; call :meth:`BenchSetup.close` to delete it.

    Raises:
        ParameterError: unknown or disallowed parameter set, or ``n < 1``.
    """
    if n < 1:
        raise ParameterError("gallery size must be at least 1")
    init: dict[str, Any] = {"threshold": THRESHOLD, "allow_insecure": allow_insecure}
    if profile == "blind":
        bps = blind_param_sets.get(blind_param_sets.DEFAULT_BLIND_PARAMS if params is None else params,
                                   allow_insecure=allow_insecure)
        dim = bps.dim
        init.update(params=sealed_params_for(bps.name, allow_insecure), dim=dim, blind_params=bps.name)
        prefix = f"pprm-bench-blind-{n}-"
    else:
        ps = param_sets.get(param_sets.DEFAULT_PARAMS if params is None else params, allow_insecure=allow_insecure)
        dim = DIM
        init.update(params=ps.name, dim=dim)
        prefix = f"pprm-bench-{n}-"
    say = progress or (lambda _msg: None)
    if root is not None:
        os.makedirs(root, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=prefix, dir=root)
    try:
        resp = State.init(os.path.join(scratch, "responder"), RESPONDER, **init,
                          quota_per_case=MAX_QUOTA, quota_per_peer=MAX_QUOTA)
        req = State.init(os.path.join(scratch, "requester"), REQUESTER, **init)
        resp.trust(req.card_bytes)
        req.trust(resp.card_bytes)
        say(f"{n:,} templates: generating the synthetic gallery")
        gallery = make_gallery(n, dim=dim, seed=seed)
        last = [-1]

        def enrol_progress(done: int, total: int) -> None:
            tenth = done * 10 // max(total, 1)
            if tenth > last[0]:
                last[0] = tenth
                say(f"{n:,} templates: enrolling, {done * 100 // max(total, 1)}% of ciphertexts")

        t0 = time.perf_counter()
        ids = KeyService(resp).enroll(gallery.templates, gallery.references, enrol_progress)
        enroll_seconds = time.perf_counter() - t0
        say(f"{n:,} templates: enrolled in {enroll_seconds:.1f} s")
        rows = np.full(max(ids) + 1, -1, dtype=np.int64)
        rows[np.asarray(ids, dtype=np.int64)] = np.arange(n)
        templates = normalise_templates(gallery.templates, dim)
        return BenchSetup(scratch, profile, resp, req, gallery, templates, rows, enroll_seconds)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def measure_sizes(sizes: Sequence[int], params: str, measure: Callable[[BenchSetup], dict[str, Any]], *,
                  profile: Profile = "sealed", allow_insecure: bool = False, workdir: str | None = None,
                  progress: Progress | None = None) -> list[dict[str, Any]]:
    """Measure each gallery size on a setup of its own, deleted right after.

    Args:
        sizes: the gallery sizes, in order.
        params: parameter set of the profile.
        measure: turns one setup into its result row.
        profile: ``sealed`` or ``blind``.
        allow_insecure: accept ``INSECURE*`` sets (tests only).
        workdir: parent of the scratch directories (default: system temp).
        progress: receives one-line status messages.

    Returns:
        One row per size, in the order of ``sizes``.

    Raises:
        ParameterError: see :func:`build_setup`.
    """
    rows = []
    for n in sizes:
        setup = build_setup(int(n), params, profile=profile, allow_insecure=allow_insecure, root=workdir,
                            progress=progress)
        try:
            rows.append(measure(setup))
        finally:
            setup.close()
    return rows
