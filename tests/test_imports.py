"""What ``import pprm`` and ``pprm --help`` load and run, in a fresh interpreter.

``import pprm`` must stay cheap: it loads the modules pinned in
:data:`ALLOWED` (add to that list deliberately, never by accident), none of
the optional heavy dependencies, and it runs no homomorphic-encryption work:
no kernel backend is chosen, so the native self-check (a SEAL context, a key
and encryptions) has not run, and no SEAL context or key is built. The CLI's
``--help`` must not run the self-check either.

Calls are watched with a profile hook installed before the first pprm import,
so the checks hold whichever module would have triggered them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

# Every pprm module a bare ``import pprm`` loads.
ALLOWED = {
    "pprm",
    "pprm._fs",
    "pprm.crypto",
    "pprm.crypto.answer_codec",
    "pprm.crypto.blind_keys",
    "pprm.crypto.blind_params",
    "pprm.crypto.context",
    "pprm.crypto.embedding",
    "pprm.crypto.encoding",
    "pprm.crypto.identity",
    "pprm.crypto.keys",
    "pprm.crypto.masked_codec",
    "pprm.crypto.params",
    "pprm.crypto.registry",
    "pprm.crypto.seal_stream",
    "pprm.errors",
    "pprm.matching",
    "pprm.matching.blind",
    "pprm.matching.blind_client",
    "pprm.matching.decide",
    "pprm.matching.decide_native",
    "pprm.matching.diagonals",
    "pprm.matching.encode_native",
    "pprm.matching.flood",
    "pprm.matching.gallery",
    "pprm.matching.galois_native",
    "pprm.matching.kernel",
    "pprm.matching.kernel_native",
    "pprm.matching.kernel_batch",
    "pprm.matching.kernel_numpy",
    "pprm.matching.mac_args",
    "pprm.matching.mask",
    "pprm.matching.mask_kernel",
    "pprm.matching.mask_draw_native",
    "pprm.crypto.csprng",
    "pprm.matching.owner",
    "pprm.matching.protocols",
    "pprm.matching.sealed",
    "pprm.matching.templates",
    "pprm.node",
    "pprm.node.audit",
    "pprm.node.blind_keyring",
    "pprm.node.blind_store",
    "pprm.node.config",
    "pprm.node.keylink",
    "pprm.node.keyservice",
    "pprm.node.outbox",
    "pprm.node.policy",
    "pprm.node.remote_keys",
    "pprm.node.requester",
    "pprm.node.responder",
    "pprm.node.split",
    "pprm.node.state",
    "pprm.profile",
    "pprm.protocol",
    "pprm.protocol.blind_messages",
    "pprm.protocol.canonical",
    "pprm.protocol.card",
    "pprm.protocol.envelope",
    "pprm.protocol.messages",
    "pprm.protocol.replay",
    # The state database (DIR/state.db) behind the replay cache, the quota ledger and the
    # outbox: loads the standard library's sqlite3 (a few ms), no third-party module.
    "pprm.protocol.statedb",
    "pprm.protocol.tokens",
}

# Optional or heavy: the HTTP stack, Dask, the face pipeline, and the pprm layers on top of them.
HEAVY = (
    "starlette",
    "uvicorn",
    "httpx",
    "distributed",
    "dask",
    "onnxruntime",
    "cv2",
    "insightface",
    "pprm.face",
    "pprm.net",
    "pprm.cluster",
    "pprm.cli",
    "pprm.bench",
)

# Runs in the child. Records every call of a function (not a module or class body) that
# chooses the kernel backend, loads or checks the native kernel, or builds a SEAL context
# or keys. The backend's own module may be probed for "__path__" by the import system;
# that goes through its __getattr__, which is not watched.
_WATCH = textwrap.dedent(
    """
    import inspect, json, os, sys

    WATCHED = {
        os.path.join("pprm", "matching", "kernel.py"): {"backend", "available_backends", "_select"},
        os.path.join("pprm", "matching", "kernel_selfcheck.py"): None,
        os.path.join("pprm", "matching", "kernel_native.py"): None,
        os.path.join("pprm", "crypto", "context.py"): None,
        os.path.join("pprm", "crypto", "keys.py"): None,
        os.path.join("pprm", "crypto", "blind_keys.py"): None,
    }
    ran = []

    def watch(frame, event, arg):
        code = frame.f_code
        if event != "call" or not code.co_flags & inspect.CO_OPTIMIZED:
            return
        for path, names in WATCHED.items():
            if code.co_filename.endswith(os.sep + path) and (names is None or code.co_name in names):
                ran.append(path + ":" + code.co_name)

    sys.setprofile(watch)
    """
)


def _child(body: str) -> dict[str, Any]:
    """Run ``body`` after the watch hook in a fresh interpreter; it must leave a dict in ``result``."""
    code = _WATCH + textwrap.dedent(body) + textwrap.dedent(
        """
        sys.setprofile(None)
        result["ran"] = ran
        result["modules"] = sorted(sys.modules)
        print("RESULT " + json.dumps(result))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ), check=False)
    assert done.returncode == 0, done.stderr
    line = next(ln for ln in reversed(done.stdout.splitlines()) if ln.startswith("RESULT "))
    out: dict[str, Any] = json.loads(line[len("RESULT "):])
    return out


def _loaded(modules: list[str], name: str) -> bool:
    return any(m == name or m.startswith(name + ".") for m in modules)


def test_import_pprm_loads_only_the_pinned_modules() -> None:
    result = _child("import pprm\nresult = {}\n")
    loaded = {m for m in result["modules"] if m == "pprm" or m.startswith("pprm.")}
    assert loaded - ALLOWED == set(), "new eager imports: add them to ALLOWED only if they are meant"
    assert ALLOWED - loaded == set(), "modules no longer loaded: drop them from ALLOWED"


def test_import_pprm_loads_no_heavy_optional_module() -> None:
    result = _child("import pprm\nresult = {}\n")
    assert [name for name in HEAVY if _loaded(result["modules"], name)] == []


def test_import_pprm_chooses_no_backend_and_builds_no_seal_context() -> None:
    result = _child(
        """
        import pprm
        from pprm.matching import kernel
        result = {"selected": kernel._selected, "checked": kernel._native_ok}
        """
    )
    assert result["ran"] == []
    assert result["selected"] is None and result["checked"] is None
    assert not _loaded(result["modules"], "pprm.matching.kernel_selfcheck")
    assert not _loaded(result["modules"], "pprm._native_kernel")


def test_reading_the_backend_runs_the_self_check() -> None:
    # The converse of the test above, so that the watch hook is known to see a self-check.
    result = _child(
        """
        import pprm
        result = {"backend": pprm.BACKEND}
        """
    )
    assert result["backend"] in ("native", "numpy")
    assert any(r.endswith("kernel.py:backend") for r in result["ran"])
    assert any(r.endswith("kernel_selfcheck.py:native_passes_self_check") for r in result["ran"])


def test_cli_help_runs_no_self_check() -> None:
    result = _child(
        """
        import contextlib, io
        from pprm.cli.main import main
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                code = main(["--help"])
            except SystemExit as exc:
                code = exc.code
        result = {"code": code, "help": out.getvalue()}
        """
    )
    assert result["code"] in (0, None)
    assert "usage:" in result["help"]
    assert result["ran"] == []
    assert not _loaded(result["modules"], "pprm.matching.kernel_selfcheck")
