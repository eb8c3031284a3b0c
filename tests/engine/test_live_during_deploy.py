"""What the registry calls live follows the route the moment it moves, and a deploy in flight is not drift:
a real worker deploys with a bake while the reconciler runs (its own process, as ``make run`` keeps it),
through a real MLServer and Envoy; and the same moves, stage by stage, in this process."""

from __future__ import annotations

import json
import re

import pytest
from django.conf import settings
from django.db.models import F

from deployments import services
from deployments.inference import StageEvent, V2Client
from deployments.models import (
    TERMINAL_STATUSES,
    DeploymentTask,
    Drift,
    EmbeddingModel,
    InferenceServer,
    ModelLease,
    TaskStatus,
)
from deployments.services import pipelines
from deployments.services.reconciler import reconcile_models
from deployments.services.recording import TaskRecorder
from tests.support.drills import assert_settled, live_model
from tests.support.processes import wait_for, wait_for_status

pytestmark = pytest.mark.mlserver

BAKE_SECONDS = 8


def deploy(api, body: dict) -> DeploymentTask:
    response = api.post("/deploy", data=json.dumps(body), content_type="application/json")
    assert response.status_code == 202, response.json()
    return DeploymentTask.objects.get(pk=response.json()["task_id"])


def answering(front: V2Client, model_id: str) -> str | None:
    """The revision the model's URL answers from through Envoy now."""
    return front.infer(model_id, ["which revision?"]).parameters.get("revision")


def baking(task: DeploymentTask) -> bool:
    task.refresh_from_db()
    return (task.metadata.get("stages") or {}).get("bake", {}).get("state") == "started"


def deploy_into_its_bake(api, model_id: str, bake_seconds: float, qcluster, reconcile_loop, minilm_dir, sources_root):
    """Blue live, the reconcile loop and a real worker running, and a deploy of green in its bake:
    (blue, the deploy, the worker)."""
    blue = live_model(model_id, minilm_dir, sources_root).metadata["revision"]
    reconcile_loop()
    cluster = qcluster()
    task = deploy(api, {"embedding_model_id": model_id, "config": {"bake_seconds": bake_seconds}})
    wait_for(lambda: baking(task), 120, "the bake to start", cluster.log_tail)
    return blue, task, cluster


@pytest.mark.drill
@pytest.mark.django_db(transaction=True)
def test_during_a_bake_the_registry_names_green_live_and_nothing_is_drift(
    api, inference_settings, qcluster, reconcile_loop, envoy, minilm_dir, sources_root
):
    model_id = "live-baking"
    blue, task, cluster = deploy_into_its_bake(
        api, model_id, BAKE_SECONDS, qcluster, reconcile_loop, minilm_dir, sources_root
    )
    reconciled_before = InferenceServer.objects.get().checked_at
    cycles = 0
    with V2Client(envoy.url) as front:
        green = answering(front, model_id)
        assert green not in (None, blue)
        while baking(task):
            shown = api.get(f"/models/{model_id}").json()
            assert (shown["live_revision"], shown["drift"]) == (green, None), shown
            detail = api.get(f"/deploy/{task.pk}").json()["detail"]
            assert re.fullmatch(rf"bake: \d+ s of {BAKE_SECONDS} s, blue {blue} kept loaded", detail), detail
            assert answering(front, model_id) == green
            cycles += len(reconcile_models().already_served)  # this process's cycles, beside the loop's
    assert cycles > 3
    # The reconcile loop looked at the fleet during the bake too (every cycle records what the servers hold).
    assert InferenceServer.objects.get().checked_at > reconciled_before

    wait_for_status(task, set(TERMINAL_STATUSES), 60, cluster)
    assert task.status == TaskStatus.DONE, task.detail
    assert api.get(f"/models/{model_id}").json()["live_revision"] == green
    assert not Drift.objects.filter(embedding_model_id=model_id).exists()  # not even one opened and resolved
    assert_settled(model_id)


@pytest.mark.drill
@pytest.mark.django_db(transaction=True)
def test_a_rollback_during_the_bake_puts_blue_back_as_live_in_the_registry(
    api, inference_settings, qcluster, reconcile_loop, envoy, minilm_dir, sources_root
):
    model_id = "live-rollback"
    blue, first, cluster = deploy_into_its_bake(api, model_id, 120, qcluster, reconcile_loop, minilm_dir, sources_root)
    with V2Client(envoy.url) as front:
        green = answering(front, model_id)
        assert api.get(f"/models/{model_id}").json()["live_revision"] == green != blue

        # An operator asks for blue again: the bake rolls back at once (a route update), and the deploy
        # of blue that asked finds it loaded everywhere.
        rollback = deploy(api, {"embedding_model_id": model_id, "config": {"revision": blue}})
        wait_for(lambda: answering(front, model_id) == blue, 30, "the route back to blue", cluster.log_tail)
        wait_for(lambda: api.get(f"/models/{model_id}").json()["live_revision"] == blue, 2, "the registry to follow")

    wait_for_status(first, set(TERMINAL_STATUSES), 60, cluster)
    assert (first.status, first.metadata["failed_stage"]) == (TaskStatus.FAILED, "bake")
    wait_for_status(rollback, set(TERMINAL_STATUSES), 60, cluster)
    assert rollback.status == TaskStatus.DONE, rollback.detail
    shown = api.get(f"/models/{model_id}").json()
    assert (shown["live_revision"], shown["drift"]) == (blue, None)
    assert not Drift.objects.filter(embedding_model_id=model_id).exists()
    assert_settled(model_id)


@pytest.fixture
def one_process(inference_settings):
    # The test's transaction holds the lease row; keep the heartbeat thread from waiting on it.
    inference_settings.TASK_LEASE_SECONDS = 600
    return inference_settings


@pytest.mark.django_db
def test_the_registry_moves_at_the_switch_and_back_at_a_rollback_not_when_the_task_ends(
    one_process, minilm_dir, sources_root, monkeypatch
):
    model_id = "live-moves"
    blue = live_model(model_id, minilm_dir, sources_root).metadata["revision"]
    seen: dict[tuple[str, str], tuple[str, str | None]] = {}
    record = TaskRecorder.__call__

    def noting(recorder: TaskRecorder, event: StageEvent) -> None:
        # What the registry and the router say as each stage of the bake begins and ends.
        if event.stage in ("switch", "bake"):
            with V2Client(settings.INFERENCE_SERVER_URL) as front:
                answers = front.infer(model_id, ["x"]).parameters.get("revision")
            seen[event.stage, event.state] = (EmbeddingModel.objects.get(pk=model_id).live_revision, answers)
        record(recorder, event)

    monkeypatch.setattr(TaskRecorder, "__call__", noting)
    first = services.submit_deployment(model_id, config={"bake_seconds": 60}).task
    services.submit_deployment(model_id, config={"revision": blue})  # waiting: the bake rolls back at once

    assert services.run_task(first.pk) == TaskStatus.FAILED
    green = seen["bake", "started"][0]
    assert green != blue
    assert seen["switch", "started"] == (blue, blue)
    assert seen["switch", "done"] == seen["bake", "started"] == (green, green)
    assert seen["bake", "failed"] == (blue, blue)  # before green is retired and the task ends


@pytest.mark.django_db
def test_a_route_move_is_recorded_only_while_the_attempt_holds_the_lease(
    one_process, minilm_dir, sources_root, monkeypatch
):
    model_id = "live-fenced"
    blue = live_model(model_id, minilm_dir, sources_root).metadata["revision"]
    follows = pipelines._registry_follows_route

    def taken_over_at_the_switch(model, endpoint, fence):
        follow = follows(model, endpoint, fence)

        def superseded_then_follow(revision, dimensions):
            # A newer attempt takes the lease between the route update and the registry write.
            ModelLease.objects.filter(pk=model_id).update(owner="a-newer-attempt", generation=F("generation") + 1)
            follow(revision, dimensions)

        return superseded_then_follow

    monkeypatch.setattr(pipelines, "_registry_follows_route", taken_over_at_the_switch)
    task = services.submit_deployment(model_id).task

    assert services.run_task(task.pk).startswith("superseded")
    assert EmbeddingModel.objects.get(pk=model_id).live_revision == blue  # left to the attempt that holds the lease
