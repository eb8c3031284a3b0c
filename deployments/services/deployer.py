"""The one place the serving layer's deployer is built from settings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.utils.module_loading import import_string

from deployments.inference import GreenDeployer, ModelRepository, V2Client


def build_green_deployer(ready_timeout: float | None = None) -> GreenDeployer:
    """A GreenDeployer for the configured server, repository and allowed source roots."""
    client = V2Client(settings.INFERENCE_SERVER_URL)
    repository = ModelRepository(settings.MODEL_REPOSITORY_ROOT, keep_revisions=settings.INFERENCE_KEEP_REVISIONS)
    return GreenDeployer(
        client,
        repository,
        allowed_roots=settings.ALLOWED_SOURCE_ROOTS,
        ready_timeout=ready_timeout if ready_timeout is not None else settings.INFERENCE_READY_TIMEOUT,
    )


@contextmanager
def deployer_session(ready_timeout: float | None = None) -> Iterator[GreenDeployer]:
    """The configured deployer (INFERENCE_DEPLOYER_FACTORY), with its HTTP client closed afterwards."""
    factory = import_string(settings.INFERENCE_DEPLOYER_FACTORY)
    deployer = factory(ready_timeout=ready_timeout)
    try:
        yield deployer
    finally:
        deployer.client.close()
