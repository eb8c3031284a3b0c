"""Fixtures of the serving layer's tests that deploy: a green deployer on the session's fleet (one real
MLServer behind a real Envoy), a client of Envoy, and a root to put model sources in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deployments.inference import GreenDeployer, V2Client


@pytest.fixture
def sources(sources_root: Path) -> Path:
    """An allowed source root holding copies of MiniLM we can vary per test."""
    return sources_root


@pytest.fixture
def deployer(fleet, model_repository, minilm_dir, sources) -> GreenDeployer:
    return GreenDeployer(fleet, model_repository, allowed_roots=[minilm_dir.parent, sources], ready_timeout=120)


@pytest.fixture
def front(envoy) -> Iterator[V2Client]:
    """A client of the fleet's one address, Envoy: what callers use."""
    with V2Client(envoy.url, timeout=30) as client:
        yield client
