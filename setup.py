"""Build hook for the optional native kernel; all metadata lives in pyproject.toml.

The cffi extension ``pprm._native_kernel`` speeds up the multiply-accumulates
of both profiles (loaded by :mod:`pprm.matching.kernel_native`). It is
optional: without a working C compiler the build prints one warning line and
pprm installs with the pure numpy kernel.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError


class OptionalBuildExt(build_ext):
    """``build_ext`` that turns a compiler failure into a one-line warning."""

    def run(self) -> None:
        """Build the extensions, or warn and carry on (platform without a compiler).

        Returns:
            None.
        """
        # "optional" also makes setuptools skip copying a missing module into the
        # source tree (editable installs), which would otherwise fail the install.
        for ext in self.extensions:
            ext.optional = True
        try:
            super().run()
        except (PlatformError, ExecError, OSError) as exc:
            self._warn(exc)

    def build_extension(self, ext: object) -> None:
        """Build one extension, or warn and carry on if the compiler fails.

        Args:
            ext: the setuptools Extension.

        Returns:
            None.
        """
        try:
            super().build_extension(ext)
        except (CCompilerError, ExecError, PlatformError, OSError) as exc:
            self._warn(exc)

    @staticmethod
    def _warn(exc: BaseException) -> None:
        # One line: the compiler's own output has already been printed above it.
        detail = " ".join(str(exc).split())
        if len(detail) > 160:
            detail = detail[:157] + "..."
        print(
            f"WARNING: pprm native kernel not built ({type(exc).__name__}: {detail}); using the numpy kernel",
            file=sys.stderr,
        )


def _native_options() -> dict[str, list[str]]:
    # pyproject's build-system lists cffi; if a build front end skipped it anyway, warn
    # instead of letting setuptools ignore an unknown "cffi_modules" option in silence.
    # A source tree without native/ (e.g. an sdist made without MANIFEST.in) still installs.
    try:
        import cffi  # noqa: F401
    except ImportError:
        missing = "cffi missing at build time"
    else:
        if os.path.isfile(os.path.join("native", "build_kernel.py")):
            return {"cffi_modules": ["native/build_kernel.py:ffibuilder"]}
        missing = "native/build_kernel.py missing"
    print(f"WARNING: pprm native kernel not built ({missing}); using the numpy kernel", file=sys.stderr)
    return {}


setup(cmdclass={"build_ext": OptionalBuildExt}, **_native_options())
