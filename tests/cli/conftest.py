"""The sealed-profile world of the CLI tests (:mod:`tests.cli.worlds`), one per test module."""

from __future__ import annotations

import pytest

from tests.cli.worlds import World, build_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """DE, FR, NL initialised, mutually trusted and (FR, NL) enrolled, all via the CLI."""
    return build_world(tmp_path_factory.mktemp("cli"))
