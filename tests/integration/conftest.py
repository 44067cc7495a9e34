"""Fixtures shared by the integration modules that drive one private host through the CLI."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from review_support import Cli


@pytest.fixture(scope="module")
def conn(private_host: Any) -> Iterator[Any]:
    """A libvirt connection to the module's private host."""
    c = private_host.connect()
    yield c
    c.close()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """A folder of the module's own: the user's home and working folder."""
    return tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2].removeprefix("test_"))


@pytest.fixture(scope="module")
def cli(private_host: Any, home: Path) -> Cli:
    """`virtplan` run as a user with that home, against the private host."""
    return Cli(private_host.uri, home / "user", cwd=home)
