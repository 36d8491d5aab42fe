"""One benchmark run as one JSON document: ``pprm bench --out FILE.json``.

:func:`run_document` runs the sealed benchmark (:func:`pprm.bench.sealed.run_bench`),
the blind one (:func:`pprm.bench.blind.run_blind_bench`) or both, one after
the other in the same process, and :func:`build_document` turns their
results into a document tagged ``"format": "pprm.bench/1"``:

* ``created`` (UTC, when the document was assembled), ``machine``
  (:func:`pprm.bench.report.machine_info`: CPU model, cores, RAM, Python,
  numpy, tenseal and pprm versions, the kernel backend) and the 1-minute
  ``load_average`` at the start and at the end of the run;
* ``profiles``: per profile run, its ``params``, ``repeats`` and one row per
  gallery size (:data:`ROW_KEYS`): the responder's median time, the time per
  template, numpy float32 ``G @ q`` over the same templates measured in the
  same run (the median and the fastest run), the ratio, and the bytes of the query, the response and the
  requester's keys; plus the profile's whole ``result``, as ``pprm bench
  --json`` prints it, so nothing measured is lost.

Every figure in a row is taken from the profile's result, never estimated;
:func:`load_document` reads a document back (``pprm bench --plot --from``)
and :func:`per_template_series` gives the three series of the figure
(:mod:`pprm.bench.plot`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pprm.bench import report
from pprm.bench.report import Progress
from pprm.errors import ParameterError
from pprm.profile import PROFILES, Profile, is_profile

__all__ = [
    "FORMAT",
    "ROW_KEYS",
    "NUMPY_SERIES",
    "ProfileRun",
    "run_document",
    "build_document",
    "profile_rows",
    "document_bytes",
    "load_document",
    "per_template_series",
]

FORMAT = "pprm.bench/1"
# The keys of one row of a profile in the document, in the order they are described.
ROW_KEYS = ("n", "responder_ms", "responder_ms_runs", "per_template_us", "numpy_ms", "numpy_per_template_us",
            "numpy_min_ms", "numpy_min_per_template_us", "ratio_to_numpy", "query_bytes", "response_bytes",
            "key_bytes", "load_average")
# The name of the plaintext series in :func:`per_template_series`.
NUMPY_SERIES = "numpy"


@dataclass(frozen=True)
class ProfileRun:
    """What to run of one profile.

    Attributes:
        profile: ``sealed`` or ``blind``.
        sizes: gallery sizes.
        params: the profile's parameter set name.
    """

    profile: Profile
    sizes: tuple[int, ...]
    params: str


def _per_template_us(ms: float, n: int) -> float:
    """Milliseconds for ``n`` templates as microseconds per template."""
    return ms * 1e3 / n


def profile_rows(profile: Profile, result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The document's rows of one profile, taken from its benchmark result.

    Args:
        profile: the profile ``result`` was measured with.
        result: as returned by :func:`pprm.bench.sealed.run_bench` (sealed)
            or :func:`pprm.bench.blind.run_blind_bench` (blind).

    Returns:
        One dict per gallery size with the keys of :data:`ROW_KEYS`. The
        responder time is the whole :meth:`pprm.node.responder.Responder.answer`
        path in both profiles (``query_ms`` of the sealed result,
        ``responder_ms`` of the blind one), a median; ``numpy_ms`` is the
        median of the plaintext runs and ``ratio_to_numpy`` the responder's
        ratio to it, ``numpy_min_ms`` the fastest run; ``response_bytes`` is the answer
        message (sealed: an answer without a hit); ``key_bytes`` is the blind
        key announcement (sent once per key lifetime) and None for sealed,
        whose requester sends no keys.

    Raises:
        KeyError: ``result`` lacks a figure of its profile.
    """
    rows = []
    for r in result["sizes"]:
        n = int(r["n"])
        if profile == "sealed":
            ms, runs, keys = r["query_ms"], r["query_ms_runs"], None
        else:
            ms, runs, keys = r["responder_ms"], r["responder_ms_runs"], r["announcement_bytes"]
        rows.append({
            "n": n,
            "responder_ms": ms,
            "responder_ms_runs": list(runs),
            "per_template_us": _per_template_us(ms, n),
            "numpy_ms": r["numpy_ms"],
            "numpy_per_template_us": _per_template_us(r["numpy_ms"], n),
            "numpy_min_ms": r["numpy_min_ms"],
            "numpy_min_per_template_us": _per_template_us(r["numpy_min_ms"], n),
            "ratio_to_numpy": r["ratio_to_numpy"],
            "query_bytes": r["query_bytes"],
            "response_bytes": r["answer_bytes"],
            "key_bytes": keys,
            "load_average": r["load_average"],
        })
    return rows


def build_document(results: Mapping[Profile, Mapping[str, Any]], *, load_before: float | None = None,
                   load_after: float | None = None) -> dict[str, Any]:
    """Assemble the ``pprm.bench/1`` document from the profiles' results.

    Args:
        results: profile -> its benchmark result (at least one).
        load_before: the 1-minute load average when the run started.
        load_after: the same when it ended.

    Returns:
        The JSON-ready document (see the module docstring).

    Raises:
        ParameterError: no result, or a key that is not a profile.
        KeyError: a result lacks a figure of its profile.
    """
    if not results:
        raise ParameterError("a benchmark document needs at least one profile's results")
    unknown = set(results) - set(PROFILES)
    if unknown:
        raise ParameterError(f"unknown profile {sorted(unknown)[0]!r}; expected 'sealed' or 'blind'")
    profiles: dict[str, Any] = {}
    for profile in PROFILES:  # a fixed order, whatever order the results came in
        if profile not in results:
            continue
        result = results[profile]
        profiles[profile] = {
            "params": result["params"],
            "repeats": result["repeats"],
            "sizes": profile_rows(profile, result),
            "result": dict(result),
        }
    return {
        "format": FORMAT,
        "created": report.utc_timestamp(),
        "machine": report.machine_info(),
        "load_average": {"before": load_before, "after": load_after},
        "profiles": profiles,
    }


def run_document(runs: Sequence[ProfileRun], repeats: int = 3, *, progress: Progress | None = None,
                 allow_insecure: bool = False, workdir: str | None = None) -> dict[str, Any]:
    """Run each profile's benchmark in turn and assemble the document.

    Args:
        runs: the profiles to run, in order (each profile at most once).
        repeats: timed queries per size, for every profile.
        progress: receives one-line status messages, prefixed with the profile.
        allow_insecure: accept ``INSECURE*`` parameter sets (tests only).
        workdir: where the scratch states are built (default the system temp directory).

    Returns:
        The document, as :func:`build_document` makes it.

    Raises:
        ParameterError: no run, a profile twice, or what the profile's
            benchmark refuses (unknown set, bad sizes, ``repeats`` below 1).
    """
    if not runs:
        raise ParameterError("name at least one profile to benchmark")
    if len({r.profile for r in runs}) != len(runs):
        raise ParameterError("each profile can be benchmarked once per run")
    say: Progress = progress or (lambda _msg: None)
    load_before = report.load_average()
    results: dict[Profile, dict[str, Any]] = {}
    for run in runs:
        def tell(msg: str, prefix: str = run.profile) -> None:
            say(f"{prefix}: {msg}")

        if run.profile == "sealed":
            from pprm.bench.sealed import run_bench

            results["sealed"] = run_bench(run.sizes, run.params, repeats, progress=tell,
                                          allow_insecure=allow_insecure, workdir=workdir)
        else:
            from pprm.bench.blind import run_blind_bench

            results["blind"] = run_blind_bench(run.sizes, run.params, repeats, progress=tell,
                                               allow_insecure=allow_insecure, workdir=workdir)
    return build_document(results, load_before=load_before, load_after=report.load_average())


def document_bytes(document: Mapping[str, Any]) -> bytes:
    """The document as the bytes ``--out`` writes.

    Args:
        document: as returned by :func:`build_document`.

    Returns:
        Indented, key-sorted UTF-8 JSON with a final newline (the form of
        every JSON file pprm writes).
    """
    return (json.dumps(document, sort_keys=True, indent=1) + "\n").encode("utf-8")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def load_document(path: str) -> dict[str, Any]:
    """Read a document written by ``pprm bench --out``.

    Only what the figure needs is checked: the format tag, and per profile
    rows with a positive ``n``, ``per_template_us`` and ``numpy_min_per_template_us``.

    Args:
        path: the JSON file.

    Returns:
        The document.

    Raises:
        ParameterError: not JSON, not a ``pprm.bench/1`` document, or rows
            without those figures.
        OSError: the file cannot be read.
    """
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ParameterError(f"benchmark file {path} is not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ParameterError(f"benchmark file {path} is not a {FORMAT} document (written by pprm bench --out)")
    profiles = doc.get("profiles")
    if not isinstance(profiles, dict) or not profiles or not all(is_profile(p) for p in profiles):
        raise ParameterError(f"benchmark file {path} names no profile, or an unknown one")
    for name, entry in profiles.items():
        rows = entry.get("sizes") if isinstance(entry, dict) else None
        if not isinstance(rows, list) or not rows or not all(
                isinstance(r, dict) and all(_number(r.get(k)) for k in ("n", "per_template_us",
                                                                         "numpy_min_per_template_us"))
                for r in rows):
            raise ParameterError(f"benchmark file {path}: the {name} profile has no usable rows")
    return doc


def per_template_series(document: Mapping[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """The figure's series: microseconds per template against gallery size.

    Args:
        document: a ``pprm.bench/1`` document.

    Returns:
        Profile name -> ``(n, per_template_us)`` per size, for each profile
        run, then :data:`NUMPY_SERIES` -> ``(n, numpy_min_per_template_us)``;
        all sorted by ``n``. The plaintext series is the fastest ``G @ q`` run:
        numpy spreads it over both cores, and with another job on the machine
        most runs wait for the second core (a scheduler tick, several
        milliseconds), so the median would plot the machine's load, not
        numpy. Where both profiles ran at the same size, each timed ``G @ q``;
        the faster of the two is plotted.
    """
    series: dict[str, list[tuple[int, float]]] = {}
    numpy_us: dict[int, float] = {}
    profiles = document["profiles"]
    for name in sorted(profiles, key=lambda p: PROFILES.index(p) if p in PROFILES else len(PROFILES)):
        entry = profiles[name]
        series[name] = sorted((int(r["n"]), float(r["per_template_us"])) for r in entry["sizes"])
        for r in entry["sizes"]:
            n = int(r["n"])
            numpy_us[n] = min(numpy_us.get(n, float("inf")), float(r["numpy_min_per_template_us"]))
    series[NUMPY_SERIES] = sorted(numpy_us.items())
    return series
