"""What a worker does for a deployment or a deletion, through the serving layer's public API.

The serving layer reports each stage through the recorder; these functions add the control
plane's own checks (registered, capacity) and keep the registry's "what is live" in step with
what the model repository says, whatever the outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from deployments.inference import DeployFailed, FenceLost, GreenDeployer, StageEvent
from deployments.inference.green import RouteMoved
from deployments.models import DeploymentTask, EmbeddingModel, Task, TaskStatus
from deployments.services.deployer import deployer_session
from deployments.services.leases import Fence, lock_capacity
from deployments.services.memory import forget_footprints, memory_planner, record_footprint
from deployments.services.recording import Outcome, TaskRecorder

logger = logging.getLogger(__name__)


def run_deployment(task: Task, recorder: TaskRecorder, fence: Fence) -> Outcome:
    model = EmbeddingModel.objects.filter(pk=task.embedding_model_id).first()
    if model is None:
        return _refuse(recorder, f"embedding model {task.embedding_model_id!r} is not registered")
    config = task.config or {}
    expected_dimensions = config.get("expected_dimensions", model.dimensions)
    # The deployer is built before a slot is reserved: a deployer that cannot be built holds no slot.
    with deployer_session(ready_timeout=config.get("ready_timeout")) as deployer:
        if refusal := reserve_capacity(model, fence):
            return _refuse(recorder, refusal)
        try:
            with _registry_follows_repository_on_failure(model.id, deployer, fence):
                fenced = deployer.fenced(fence.check)
                result = fenced.deploy(
                    model.id,
                    model.source,
                    expected_dimensions=expected_dimensions,
                    revision=config.get("revision"),
                    bake_seconds=config.get("bake_seconds"),
                    progress=recorder,
                    rollback_requested=lambda blue: rollback_waiting(model.id, blue),
                    tracking_uri=model.mlflow_tracking_uri or None,
                    admit=memory_planner(task.pk, fenced, fence),
                    routed=_registry_follows_route(model, deployer.endpoint(model.id), fence),
                )
        except DeployFailed as exc:
            return _failure(exc)
    record_footprint(model.id, result.revision, result.memory_bytes)
    forget_footprints(model.id, result.pruned_revisions)
    _update_registry(
        model.id,
        fence,
        state=EmbeddingModel.State.DEPLOYED,
        live_revision=result.revision,
        endpoint=result.endpoint,
        dimensions=result.dimensions,  # what the live revision serves; the operator's expectation was checked
    )
    return Outcome(TaskStatus.DONE, f"revision {result.revision} serves at {result.endpoint}", result.as_metadata())


def run_deletion(task: Task, recorder: TaskRecorder, fence: Fence) -> Outcome:
    # An unregistered id is still cleaned up: deleting is idempotent and leaves nothing behind.
    _update_registry(task.embedding_model_id, fence, state=EmbeddingModel.State.DELETING)
    with deployer_session() as deployer:
        try:
            with _registry_follows_repository_on_failure(task.embedding_model_id, deployer, fence):
                result = deployer.fenced(fence.check).delete(task.embedding_model_id, progress=recorder)
        except DeployFailed as exc:
            return _failure(exc)
    _update_registry(
        task.embedding_model_id, fence, state=EmbeddingModel.State.NOT_DEPLOYED, live_revision="", endpoint=""
    )
    forget_footprints(task.embedding_model_id)
    removed = len(result.removed_revisions)
    unloaded = ", ".join(result.unloaded) or "nothing"
    detail = f"unloaded {unloaded}; removed {removed} revision(s)"
    if not result.was_deployed and not removed:
        detail = f"{task.embedding_model_id} was not deployed; nothing to do"
    return Outcome(TaskStatus.DONE, detail, result.as_metadata())


def rollback_waiting(embedding_model_id: str, revision: str) -> str | None:
    """Why a deploy baking now should roll back to ``revision`` at once: a deploy of that kept revision
    waits behind it. Rolled back in the bake, that deploy finds it loaded everywhere: only a switch."""
    waiting = (
        DeploymentTask.objects.filter(
            embedding_model_id=embedding_model_id, status=TaskStatus.PENDING, config__revision=revision
        )
        .order_by("created_at")
        .first()
    )
    return f"task {waiting.pk} asks for revision {revision}" if waiting else None


def _registry_follows_route(model: EmbeddingModel, endpoint: str, fence: Fence) -> RouteMoved:
    """What the registry calls live, moved with the route the moment it moves (the switch, a rollback),
    not when the deploy ends: a bake of minutes must not name blue live while green answers. Fenced
    like every other write: a superseded attempt's route moves are not recorded (and it stops)."""
    blue_state = {"state": model.state, "live_revision": model.live_revision, "endpoint": model.endpoint}
    blue_dimensions = model.dimensions

    def follow(revision: str | None, green_dimensions: int | None) -> None:
        if revision == model.live_revision:
            fields = {**blue_state, "dimensions": blue_dimensions}
        elif revision is None:  # a first deploy rolled back: nothing serves; the slot stays held until it ends
            fields = {"state": EmbeddingModel.State.DEPLOYING, "live_revision": "", "endpoint": ""}
        else:
            fields = {"state": EmbeddingModel.State.DEPLOYED, "live_revision": revision, "endpoint": endpoint}
            if green_dimensions is not None:
                fields["dimensions"] = green_dimensions
        if not _update_registry(model.id, fence, **fields):
            fence.check()

    return follow


def _update_registry(embedding_model_id: str, fence: Fence | None, **fields: object) -> bool:
    """Write the registry entry of a model, only while ``fence`` (when given) still holds the model's lease;
    False when nothing was written."""
    rows = EmbeddingModel.objects.filter(pk=embedding_model_id)
    if fence is not None:
        rows = rows.filter(fence.condition)
    return rows.update(updated_at=timezone.now(), **fields) == 1


def reserve_capacity(model: EmbeddingModel, fence: Fence | None = None) -> str | None:
    """Take a server slot for a model that holds none, or say why not (MAX_DEPLOYED_MODELS).

    A redeploy of a live model keeps its slot. The check and the reservation happen under one
    global lock, so two models cannot both take the last slot.
    """
    with transaction.atomic():
        lock_capacity()
        model = EmbeddingModel.objects.select_for_update().get(pk=model.pk)
        if model.state in EmbeddingModel.SLOT_STATES or model.live_revision:
            return None
        holding = EmbeddingModel.objects.filter(state__in=EmbeddingModel.SLOT_STATES).exclude(pk=model.pk).count()
        limit = settings.MAX_DEPLOYED_MODELS
        # The origin compared with '>' and so let one model too many through.
        if holding >= limit:
            return f"{holding} models are deployed or being deployed; at most {limit} may be deployed at once"
        _update_registry(model.pk, fence, state=EmbeddingModel.State.DEPLOYING)
    return None


@contextmanager
def _registry_follows_repository_on_failure(
    embedding_model_id: str, deployer: GreenDeployer, fence: Fence
) -> Iterator[None]:
    """Whatever stops a procedure, the registry then says what the repository says is live; a
    superseded attempt leaves the registry to the attempt that superseded it."""
    try:
        yield
    except FenceLost:
        raise
    except BaseException:
        sync_model_state(embedding_model_id, deployer, fence)
        raise


def sync_model_state(embedding_model_id: str, deployer: GreenDeployer, fence: Fence | None = None) -> None:
    """After a failure, set the registry from what the repository says is live (blue, or nothing)."""
    try:
        live = deployer.live_revision(embedding_model_id)
    except Exception:
        logger.exception("could not read the live revision of %s", embedding_model_id)
        return
    if live:
        _update_registry(
            embedding_model_id,
            fence,
            state=EmbeddingModel.State.DEPLOYED,
            live_revision=live,
            endpoint=deployer.endpoint(embedding_model_id),
        )
    else:
        _update_registry(
            embedding_model_id, fence, state=EmbeddingModel.State.NOT_DEPLOYED, live_revision="", endpoint=""
        )


def _refuse(recorder: TaskRecorder, reason: str) -> Outcome:
    recorder(StageEvent("validate", "failed", reason, 0.0))
    return Outcome(TaskStatus.REFUSED, f"validate: {reason}", {"failed_stage": "validate", "reason": reason})


def _failure(exc: DeployFailed) -> Outcome:
    status = TaskStatus.REFUSED if exc.refused else TaskStatus.FAILED
    metadata = {"failed_stage": exc.stage, "reason": exc.reason, **exc.metadata}
    return Outcome(status, f"{exc.stage}: {exc.reason}", metadata)
