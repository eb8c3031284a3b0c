"""Capacity by memory: a deploy loads green only where it fits in REPLICA_MEMORY_BYTES.

Each revision's footprint is recorded on its ``ModelRevision`` row: estimated from its weight files
when first planned, then what the runtime counted once a deploy has loaded it (parameters and
buffers, reported with the smoke test's answer). Just before green loads, the planner adds up, per
replica, the footprints of the names it has ready (blue among them, during a deploy) and of the
revisions other running deploys have reserved, and refuses the deploy with the numbers when green
would not fit; otherwise it reserves green's footprint under the deploy's task. The check and the
reservation hold the capacity lock that slot-taking holds, so two deploys cannot both take the last
memory. The replicas' indexes are read just before the lock, not under it (an index takes seconds
with thousands of revisions in the repository): a deploy that ended meanwhile may have loaded what
they miss, so reservations of deploys that ended since a moment before the read count too.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from deployments import selectors
from deployments.inference import GreenDeployer, Revision, served_name
from deployments.inference.green import AdmitGreen
from deployments.inference.ids import REVISION_SEPARATOR
from deployments.models import EmbeddingModel, ModelRevision
from deployments.services.leases import Fence, lock_capacity
from deployments.services.reconnect import reconnecting

logger = logging.getLogger(__name__)

# Taken off the moment the replicas' indexes are read, for the clocks of the workers' hosts: a deploy's
# end is stamped by its own host.
CLOCK_MARGIN = timedelta(seconds=5)


def megabytes(size: int) -> str:
    """Bytes as operators read them in a refusal: ``90.9 MB`` (decimal megabytes)."""
    return f"{size / 1e6:,.1f} MB"


def memory_planner(task_id: str, deployer: GreenDeployer, fence: Fence | None = None) -> AdmitGreen:
    """The deployer's ``admit`` for this task: plan green against every replica's memory and reserve it."""

    def admit(green: Revision, replicas: list[str]) -> str | None:
        return plan_green(task_id, deployer, green, replicas, fence)

    return admit


# Each runs again on a new connection after a database restart mid-deploy (services/reconnect.py): safe to repeat.
@reconnecting
def plan_green(
    task_id: str, deployer: GreenDeployer, green: Revision, replicas: list[str], fence: Fence | None = None
) -> str | None:
    """Why ``green`` does not fit on one of ``replicas`` (the numbers), or None once its memory is reserved."""
    name = served_name(green.model_id, green.revision)
    read_at = timezone.now() - CLOCK_MARGIN
    ready = deployer.fleet.ready_names()
    loaded = {url: ready.get(url) or set() for url in replicas}
    with transaction.atomic():
        lock_capacity()
        if fence is not None:
            fence.check()
        _record_estimates(deployer, set().union(*loaded.values()) | {name})
        # A revision whose files could not be read is counted by their size on disk.
        need = selectors.revision_footprints([name]).get(name, green.size_bytes)
        for url, memory in selectors.replica_memory(loaded, ended_since=read_at).items():
            held = {other: size for other, size in memory.held.items() if other != name}
            used = sum(held.values())
            if name not in loaded[url] and used + need > memory.budget_bytes:
                free = max(memory.budget_bytes - used, 0)
                return (
                    f"{name} needs {megabytes(need)}, replica {url} has {megabytes(free)} free of "
                    f"{megabytes(memory.budget_bytes)} (REPLICA_MEMORY_BYTES): {len(held)} revision(s) use "
                    f"{megabytes(used)}"
                )
        if not ModelRevision.objects.filter(pk=name).update(loading_task_id=task_id):
            ModelRevision.objects.create(
                name=name,
                embedding_model_id=green.model_id,
                revision=green.revision,
                memory_bytes=need,
                loading_task_id=task_id,
            )
    return None


def _record_estimates(deployer: GreenDeployer, names: set[str]) -> None:
    """Give a footprint to each of these served names that has none yet: an estimate from its weight
    files in the repository (a revision loaded before footprints were recorded, or one never loaded)."""
    unrecorded = {
        name: name.rpartition(REVISION_SEPARATOR)[::2] for name in names - selectors.revision_footprints(names).keys()
    }
    if not unrecorded:
        return
    # A name loaded by hand under no registered model has nothing to attach it to.
    registered = set(
        EmbeddingModel.objects.filter(pk__in={model_id for model_id, _ in unrecorded.values()}).values_list(
            "pk", flat=True
        )
    )
    for name, (model_id, revision) in sorted(unrecorded.items()):
        if model_id not in registered:
            continue
        try:
            estimate = deployer.repository.estimated_memory_bytes(model_id, revision)
        except (OSError, ValueError, KeyError):
            logger.warning("no footprint for %s: its files could not be read", name)
            continue
        ModelRevision.objects.get_or_create(
            name=name, defaults={"embedding_model_id": model_id, "revision": revision, "memory_bytes": estimate}
        )


@reconnecting
def record_footprint(embedding_model_id: str, revision: str, memory_bytes: int | None) -> None:
    """Keep what the runtime counted for a revision it loaded: the next plan of it uses this."""
    if memory_bytes is None:
        return
    ModelRevision.objects.update_or_create(
        name=served_name(embedding_model_id, revision),
        defaults={
            "embedding_model_id": embedding_model_id,
            "revision": revision,
            "memory_bytes": memory_bytes,
            "measured": True,
        },
    )


@reconnecting
def forget_footprints(embedding_model_id: str, revisions: list[str] | None = None) -> None:
    """Drop the footprints of revisions the repository no longer keeps (all of the model's: None)."""
    rows = ModelRevision.objects.filter(embedding_model_id=embedding_model_id)
    if revisions is not None:
        rows = rows.filter(revision__in=revisions)
    rows.delete()
