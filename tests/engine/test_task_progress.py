"""A processing task says where it is: its stage, since when (of how long, for the bake) and what it does,
wherever its detail shows (the API, the admin's lists and pages, ``manage.py tasks``), read with the rows."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest

from deployments.inference import StageEvent
from deployments.models import DeploymentTask, Task, TaskStatus
from deployments.selectors import task_detail
from deployments.services.recording import TaskRecorder
from deployments.services.transitions import transition
from tests.commands.test_commands import run
from tests.support.factories import DeploymentTaskFactory, EmbeddingModelFactory

pytestmark = pytest.mark.django_db

BLUE = "04b1622bdf2efd11"
DEPLOYS_URL = "/admin/deployments/deploymenttask/"


def running(task: Task, *events: StageEvent, seconds_ago: float = 0) -> Task:
    """``task`` taken by a worker that reported ``events``, the last one ``seconds_ago``."""
    assert transition(task, TaskStatus.PROCESSING, by="worker-1")
    recorder = TaskRecorder(task, "worker-1")
    for event in events:
        recorder(event)
    task.refresh_from_db()
    for info in task.metadata.get("stages", {}).values():
        started = datetime.fromisoformat(info["started_at"]) - timedelta(seconds=seconds_ago)
        info["started_at"] = started.isoformat()
    Task.objects.filter(pk=task.pk).update(metadata=task.metadata)
    return DeploymentTask.objects.get(pk=task.pk)


def test_a_baking_task_says_how_long_of_how_long_and_what_it_keeps_everywhere(api, admin_client):
    EmbeddingModelFactory(id="baking")
    task = running(
        DeploymentTaskFactory(embedding_model_id="baking"),
        StageEvent("switch", "started", f"{BLUE} -> 9c0ffee000000000"),
        StageEvent("switch", "done", "the router answers from 9c0ffee000000000 after 3.1 ms", 0.2),
        StageEvent("bake", "started", f"blue {BLUE} kept loaded", planned_s=40),
        seconds_ago=12,
    )
    detail = re.compile(rf"bake: 1\d s of 40 s, blue {BLUE} kept loaded")

    assert detail.fullmatch(api.get(f"/deploy/{task.pk}").json()["detail"])
    assert detail.fullmatch(api.get("/deploy-status/baking").json()["detail"])
    assert detail.search(admin_client.get(DEPLOYS_URL).content.decode())
    assert detail.search(admin_client.get(f"{DEPLOYS_URL}{task.pk}/change/").content.decode())
    out, _ = run("tasks", "--wide")
    assert detail.search(out)
    out, _ = run("tasks", task.pk)
    assert detail.search(out)


def test_other_stages_say_their_name_their_seconds_and_what_they_do():
    loading = running(
        DeploymentTaskFactory(),
        StageEvent("load_green", "started", "loading m~9c0ffee000000000 on 2 replica(s)"),
        seconds_ago=3,
    )
    assert re.fullmatch(r"load_green: [3-9] s, loading m~9c0ffee000000000 on 2 replica\(s\)", task_detail(loading))
    validating = running(DeploymentTaskFactory(), StageEvent("validate", "started"))
    assert re.fullmatch(r"validate: \d s", task_detail(validating))
    starting = running(DeploymentTaskFactory())
    assert re.fullmatch(r"starting: \d s", task_detail(starting))


def test_the_timeline_keeps_when_each_stage_began_and_an_ended_task_says_its_outcome():
    task = running(DeploymentTaskFactory(), StageEvent("fetch", "started", "source /models/m"))
    began = task.metadata["stages"]["fetch"]["started_at"]
    TaskRecorder(task, "worker-1")(StageEvent("fetch", "done", "revision 9c0ffee000000000: 12 files", 1.5))
    task.refresh_from_db()
    assert task.metadata["stages"]["fetch"]["started_at"] == began
    assert task_detail(task) == "fetch: done"  # between two stages: a moment
    assert transition(task, TaskStatus.DONE, detail="revision 9c0ffee000000000 serves", by="worker-1")
    assert task_detail(task) == "revision 9c0ffee000000000 serves"
