"""Many deployed models at once, for tests and benchmarks of costs that must stay flat as they grow.

One real revision of a tiny model is fetched (copied, checksummed, manifest written) for the first
model; every other model's revision is a link to that folder, so a thousand models cost one copy on
disk while each one is laid out, loadable and verifiable exactly as a deploy leaves it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from deployments.inference import Fleet, ModelRepository, served_name
from deployments.inference.sources import open_source
from deployments.models import EmbeddingModel

LOAD_PARALLELISM = 4


def lay_out_live_models(repository: ModelRepository, model_ids: Sequence[str], artifact: Path) -> str:
    """Lay out ``model_ids`` with one live revision each (the same artifacts); return that revision."""
    first = model_ids[0]
    source = open_source(str(artifact), [artifact.parent])
    revision = repository.create_revision(first, source).revision
    for model_id in model_ids:
        if model_id != first:
            repository.revisions_dir(model_id).mkdir(parents=True, exist_ok=True)
            link = repository.revision_path(model_id, revision)
            if not link.exists():
                link.symlink_to(repository.revision_path(first, revision), target_is_directory=True)
        repository.write_settings(model_id, revision)
        repository.set_live(model_id, revision)
    return revision


def load_everywhere(fleet: Fleet, names: Sequence[str], ready_timeout: float = 120.0) -> None:
    """Load ``names`` on every replica, a few at a time; raise on the first failure."""

    def load(name: str) -> None:
        if failures := fleet.load(name, ready_timeout):
            raise RuntimeError(f"{name} did not load: {failures}")

    with ThreadPoolExecutor(max_workers=LOAD_PARALLELISM) as pool:
        list(pool.map(load, names))


# Envoy takes a while to warm a thousand clusters (each one's first health check).
PUBLISH_TIMEOUT = 120.0


def serve_live_models(fleet: Fleet, repository: ModelRepository, model_ids: Sequence[str], artifact: Path) -> str:
    """``model_ids`` deployed as far as the fleet goes: laid out, loaded on every replica, routed."""
    revision = lay_out_live_models(repository, model_ids, artifact)
    load_everywhere(fleet, [served_name(model_id, revision) for model_id in model_ids])
    fleet.publish(repository, timeout=PUBLISH_TIMEOUT)
    return revision


def remove_models(fleet: Fleet, repository: ModelRepository, model_ids: Sequence[str]) -> None:
    """Unload and remove what ``serve_live_models`` put in place, then publish the routes without them."""
    for model_id in model_ids:
        for revision in repository.loadable_revisions(model_id):
            fleet.unload(served_name(model_id, revision))
        repository.remove_model(model_id)
    fleet.publish(repository, timeout=PUBLISH_TIMEOUT)


def register_live(model_ids: Sequence[str], revision: str, artifact: Path, endpoint_base: str) -> None:
    """Registry rows saying ``model_ids`` are deployed at ``revision`` (one bulk insert)."""
    EmbeddingModel.objects.bulk_create(
        EmbeddingModel(
            id=model_id,
            source=str(artifact),
            state=EmbeddingModel.State.DEPLOYED,
            live_revision=revision,
            endpoint=f"{endpoint_base}/v2/models/{model_id}/infer",
        )
        for model_id in model_ids
    )


class HttpCalls(list[tuple[str, str]]):
    """(method, path) of each call, in order; ``seconds``: how long each one took to be answered."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def clear(self) -> None:
        super().clear()
        self.seconds.clear()


@contextmanager
def counted_http_calls() -> Iterator[HttpCalls]:
    """Every HTTP call this process makes meanwhile (to the replicas, to Envoy's admin), as (method, path);
    each one still goes to the real server."""
    calls = HttpCalls()
    send = httpx.Client.send

    def counted(client: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        started = time.perf_counter()
        try:
            return send(client, request, **kwargs)
        finally:
            calls.append((request.method, request.url.path))
            calls.seconds.append(time.perf_counter() - started)

    httpx.Client.send = counted  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        httpx.Client.send = send  # type: ignore[method-assign]
