"""Fixtures: each fake cloud API running on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.gcore import FakeGcore
from tests.fakes.genesiscloud import FakeGenesisCloud
from tests.fakes.instavm import FakeInstaVM


@pytest.fixture
def genesis_api() -> Iterator[FakeGenesisCloud]:
    """A running fake Genesis Cloud; its base URL is ``.url``."""
    fake = FakeGenesisCloud()
    with fake.running():
        yield fake


@pytest.fixture
def gcore_api() -> Iterator[FakeGcore]:
    """A running fake Gcore (project 1337); its base URL is ``.url``."""
    fake = FakeGcore()
    with fake.running():
        yield fake


@pytest.fixture
def instavm_api() -> Iterator[FakeInstaVM]:
    """A running fake InstaVM; its base URL is ``.url``."""
    fake = FakeInstaVM()
    with fake.running():
        yield fake
