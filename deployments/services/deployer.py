"""The one place the serving layer's deployer is built from settings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.utils.module_loading import import_string

from deployments.inference import Fleet, GreenDeployer, ModelRepository
from deployments.inference.router import RouteTable


def build_fleet() -> Fleet:
    """The configured fleet: the replicas, and the route table of the Envoy in front of them."""
    routes = RouteTable(settings.ROUTER_CONFIG_DIR, admin_url=settings.ROUTER_ADMIN_URL)
    return Fleet(
        settings.INFERENCE_SERVER_URL,
        settings.INFERENCE_REPLICA_URLS,
        routes,
        load_parallelism=settings.INFERENCE_LOAD_PARALLELISM,
    )


def build_green_deployer(ready_timeout: float | None = None) -> GreenDeployer:
    """A GreenDeployer for the configured fleet, repository and allowed source roots."""
    repository = ModelRepository(settings.MODEL_REPOSITORY_ROOT, keep_revisions=settings.INFERENCE_KEEP_REVISIONS)
    return GreenDeployer(
        build_fleet(),
        repository,
        allowed_roots=settings.ALLOWED_SOURCE_ROOTS,
        ready_timeout=ready_timeout if ready_timeout is not None else settings.INFERENCE_READY_TIMEOUT,
        bake_seconds=settings.INFERENCE_BAKE_SECONDS,
    )


@contextmanager
def deployer_session(ready_timeout: float | None = None) -> Iterator[GreenDeployer]:
    """The configured deployer (INFERENCE_DEPLOYER_FACTORY), with its HTTP clients closed afterwards."""
    factory = import_string(settings.INFERENCE_DEPLOYER_FACTORY)
    deployer = factory(ready_timeout=ready_timeout)
    try:
        yield deployer
    finally:
        deployer.close()
