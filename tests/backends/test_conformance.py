"""Every built-in state backend passes the conformance suite, ``memory`` included, against the
suite's reference (polars over the log of the operations applied)."""

from __future__ import annotations

import pytest

from arrowflow.backends.arrow_ipc import ArrowBackend
from arrowflow.backends.lmdb import LmdbBackend
from arrowflow.backends.memory import MemoryBackend
from arrowflow.backends.sql import SqlBackend
from arrowflow.state import StateBackend
from arrowflow.testing.state_conformance import Capabilities, StateConformance


class TestArrow(StateConformance):
    backend = ArrowBackend()


class TestLmdb(StateConformance):
    backend = LmdbBackend(map_size=1 << 16)  # tiny: every test also exercises map growth
    capabilities = Capabilities(nested=False)


class TestLmdbPython(StateConformance):
    """The fallback without the C extension: the same contract on the ``lmdb`` Python binding."""

    backend = LmdbBackend(map_size=1 << 16, driver="py")
    capabilities = Capabilities(nested=False)


class TestSqlite(StateConformance):
    backend = SqlBackend()
    capabilities = Capabilities(nested=False)  # NaN kept: float columns hold their bits


@pytest.mark.postgres
class TestPostgres(StateConformance):
    capabilities = Capabilities(nested=False, nul_in_text=False)
    property_examples = 10  # each example creates tables over the network: keep the suite quick

    @pytest.fixture
    def state_backend(self, postgres_url: str) -> StateBackend:
        return SqlBackend(postgres_url)


class TestMemory(StateConformance):
    """The in-heap backend too: the suite's reference is polars over the operation log."""

    backend = MemoryBackend()
