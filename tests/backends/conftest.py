"""Fixtures for the state backend tests: a real PostgreSQL server for the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from arrowflow.testing.state_conformance import temporary_postgres


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on loopback, started once and stopped at the end."""
    with temporary_postgres() as url:
        yield url
