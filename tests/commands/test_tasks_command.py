"""The operators' commands at a terminal: one task in full, whole cells with --wide, times in the one
format (deployments.clock), and options that only mean something together."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest
from django.core.management import CommandError

from deployments import services
from deployments.management.commands._operators import format_table
from deployments.models import DeploymentTask, Task, TaskEvent
from tests.commands.test_commands import bad, run
from tests.support.factories import (
    DeploymentTaskFactory,
    EmbeddingModelFactory,
    FailedDeploymentFactory,
    FinishedDeploymentFactory,
)

pytestmark = pytest.mark.django_db

AT = datetime(2026, 11, 29, 11, 46, 23, 345256, tzinfo=UTC)
LONG_REASON = "load_green: replica http://127.0.0.1:8091 did not load m~abc: " + "out of memory, " * 8 + "the end"


def created_at(task: Task, moment: datetime) -> None:
    Task.objects.filter(pk=task.pk).update(created_at=moment)


def test_tasks_and_retry_tasks_print_times_in_the_one_format_with_the_zone(settings):
    failed = FailedDeploymentFactory()
    created_at(failed, AT)
    out, _ = run("tasks")
    assert "2026-11-29 11:46:23 UTC" in out and "345256" not in out and "+00:00" not in out
    out, _ = run("retry_tasks", "--dry-run")
    assert "2026-11-29 11:46:23 UTC" in out and "345256" not in out

    settings.TIME_ZONE = "Europe/Paris"
    out, _ = run("tasks")
    assert "2026-11-29 12:46:23 CET" in out and "11:46:23" not in out
    out, _ = run("retry_tasks", "--dry-run")
    assert "2026-11-29 12:46:23 CET" in out


def test_tasks_cuts_long_details_unless_wide():
    task = FailedDeploymentFactory(detail=LONG_REASON)
    out, _ = run("tasks")
    assert LONG_REASON not in out and "…" in out
    out, _ = run("tasks", "--wide")
    assert LONG_REASON in out and "…" not in out
    out, _ = run("tasks", str(task.pk)[:8], "--wide")
    assert LONG_REASON in out


def test_the_commands_name_every_task_by_its_whole_id_however_long(django_capture_on_commit_callbacks):
    """A client's id as it sent it, a generated one whole too, in the cells and in the details that name it."""
    model = EmbeddingModelFactory(id="m")
    long_id = "nightly-" + "x" * 112  # 120 characters: wider than any cell
    with django_capture_on_commit_callbacks(execute=True):
        first = services.submit_deployment(model.id, task_id="nightly:2026-12-01").task
        second = services.submit_deletion(model.id, task_id="slow-bake-1").task
        third = services.submit_deployment(model.id, task_id=long_id).task
        fourth = services.submit_deletion(model.id).task  # a generated id

    out, _ = run("tasks", "--model", "m")
    line = {task.pk: next(row for row in out.splitlines() if f" {task.pk} " in row) for task in (first, second, third)}
    assert "queued behind nightly:2026-12-01 (deployment of m)" in line["slow-bake-1"]
    assert "queued behind nightly:2026-12-01 (deployment of m)" in line[long_id]
    assert f" {fourth.pk} " in out
    out, _ = run("tasks", "slow-bake-1")
    assert re.search(r"^task +slow-bake-1$", out, re.MULTILINE)

    services.cancel_task(first)
    services.cancel_task(Task.objects.get(pk=second.pk))
    out, _ = run("retry_tasks", "--status", "canceled", "--model", "m")
    assert " nightly:2026-12-01 " in out and " slow-bake-1 " in out
    out, _ = run("retry_tasks", "--status", "canceled", "--model", "m", "--dry-run")
    assert out.strip() == "No task matches; nothing to retry."  # both retried already
    retried = Task.objects.get(retry_of_id="nightly:2026-12-01")
    with pytest.raises(services.RetryRefused) as refused:
        services.retry_task(first)
    assert f"already retried as {retried.pk} (attempt 2)" in str(refused.value)


def test_a_cut_cell_is_cut_between_words_so_an_id_in_it_stays_whole():
    waiting_behind = "queued behind 3357e86d-1111-4222-8333-444455556666 (deployment of a-model-with-a-long-id)"
    table = format_table(["detail"], [[waiting_behind], ["x" * 130]], max_width=60)
    assert "queued behind 3357e86d-1111-4222-8333-444455556666 (deployment…" in table
    assert "x" * 130 in table  # one word: whole


def test_tasks_shows_one_task_in_full_by_its_id_or_its_first_characters():
    model = EmbeddingModelFactory(id="full")
    first = FailedDeploymentFactory(
        id="7f3a9c1e-0000-4000-8000-000000000001",
        embedding_model_id=model.id,
        config={"ready_timeout": 60},
        detail=LONG_REASON,
        metadata={"attempt": 1, "failed_stage": "load_green", "reason": "out of memory", "revision": "rev-9"},
    )
    created_at(first, AT)
    TaskEvent.objects.create(task=first, stage="validate", state="done", message="validate ok", duration_s=0.25)
    TaskEvent.objects.create(task=first, stage="load_green", state="failed", message="out of memory")
    TaskEvent.objects.filter(task=first).update(created_at=AT)
    retry = DeploymentTaskFactory(embedding_model_id=model.id, retry_of=first, attempt=2, status="processing")

    out, _ = run("tasks", "7f3a9c1e")
    facts = dict(line.split(None, 1) for line in out.split("\n\n")[0].splitlines() if " " in line.strip())
    assert facts["task"].strip() == first.pk
    assert facts["kind"].strip() == "deployment" and facts["model"].strip() == "full"
    assert facts["status"].strip() == "failed" and facts["stage"].strip() == "load_green"
    assert facts["detail"].strip() == LONG_REASON  # whole: one task is shown in full
    assert json.loads(facts["config"]) == {"ready_timeout": 60}
    assert facts["created"].strip() == "2026-11-29 11:46:23 UTC"
    timeline = out[out.index("Timeline (2 event(s))") : out.index("Attempts")]
    assert "validate ok" in timeline and "0.25s" in timeline and "2026-11-29 11:46:23 UTC" in timeline
    attempts = out[out.index("Attempts (2)") : out.index("Metadata")]
    assert f"{first.pk} (this one)" in attempts and retry.pk in attempts and "processing" in attempts
    metadata = json.loads(out[out.index("Metadata") + len("Metadata") :])
    assert metadata["revision"] == "rev-9"

    # The retry's page names the same chain, from its side.
    out, _ = run("tasks", retry.pk)
    assert f"{retry.pk} (this one)" in out and first.pk in out


def test_tasks_refuses_an_ambiguous_or_unknown_short_id():
    DeploymentTaskFactory(id="abcd1234-one")
    DeploymentTaskFactory(id="abcd1234-two")
    ambiguous = bad("tasks", "abcd1234")
    assert "abcd1234-one" in ambiguous and "abcd1234-two" in ambiguous
    assert "abcd1234-two" in run("tasks", "abcd1234-t")[0]
    assert "beginning with" in bad("tasks", "ffff0000")
    assert "--status" in bad("tasks", "abcd1234-one", "--status", "failed")


@pytest.mark.parametrize("command", ["deploy_models", "delete_models"])
@pytest.mark.parametrize("option", ["--timeout", "--poll"])
def test_wait_options_without_wait_are_refused_naming_both(command, option):
    EmbeddingModelFactory(id="waiting")
    refused = bad(command, "waiting", option, "5")
    assert refused.startswith(f"{option} applies only with --wait")
    assert bad(command, "waiting", "--timeout", "5", "--poll", "1").startswith(
        "--timeout and --poll apply only with --wait"
    )
    assert not DeploymentTask.objects.exists() and not Task.objects.exists()


def test_delete_models_takes_no_config():
    EmbeddingModelFactory(id="plain")
    with pytest.raises(CommandError, match="unrecognized arguments: --config"):
        run("delete_models", "plain", "--config", "{}")
    assert not Task.objects.exists()
    FinishedDeploymentFactory()  # and deploy_models still does
    run("deploy_models", "plain", "--dry-run", "--config", '{"expected_dimensions": 384}')
