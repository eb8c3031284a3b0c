"""The audit trail of management commands: a command has no user, so it is recorded as the command's
name and the OS user that ran it, via command."""

from __future__ import annotations

import getpass
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

from deployments.inference.packaged import packaged_model_dir
from deployments.models import AuditEntry, DeletionTask, DeploymentTask, EmbeddingModel
from tests.support.artifacts import small_model_folder
from tests.support.factories import EmbeddingModelFactory, FailedDeploymentFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def os_user(monkeypatch) -> str:
    monkeypatch.setattr(getpass, "getuser", lambda: "alice")
    return "alice"


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_deploy_and_delete_models_record_the_command_and_the_os_user(django_capture_on_commit_callbacks):
    EmbeddingModelFactory(id="cmd-a"), EmbeddingModelFactory(id="cmd-b")
    with django_capture_on_commit_callbacks(execute=True):
        run("deploy_models", "cmd-a", "cmd-b", "--config", '{"expected_dimensions": 384}')
        run("delete_models", "cmd-a")

    deploys = AuditEntry.objects.filter(object_kind="deployment").order_by("embedding_model_id")
    assert [(e.embedding_model_id, e.action, e.via, e.user) for e in deploys] == [
        ("cmd-a", "create", "command", None),
        ("cmd-b", "create", "command", None),
    ]
    assert {e.actor for e in deploys} == {"command:deploy_models (os user: alice)"}
    assert all(e.changes == {"config": {"expected_dimensions": 384}} for e in deploys)
    assert {e.object_id for e in deploys} == set(DeploymentTask.objects.values_list("pk", flat=True))

    deletion = AuditEntry.objects.get(object_kind="deletion")
    assert (deletion.actor, deletion.object_id) == (
        "command:delete_models (os user: alice)",
        DeletionTask.objects.get().pk,
    )
    # The tasks name the same actor as the trail.
    assert DeletionTask.objects.get().requested_by == "command:delete_models (os user: alice)"


def test_a_dry_run_records_nothing():
    EmbeddingModelFactory(id="dry")
    run("deploy_models", "dry", "--dry-run")
    assert not AuditEntry.objects.exists()


def test_retry_tasks_records_each_retry(django_capture_on_commit_callbacks):
    failed = FailedDeploymentFactory(embedding_model_id=EmbeddingModelFactory(id="rt").id)
    with django_capture_on_commit_callbacks(execute=True):
        run("retry_tasks")
    entry = AuditEntry.objects.get()
    attempt = DeploymentTask.objects.get(retry_of=failed)
    assert (entry.actor, entry.via, entry.action, entry.object_id) == (
        "command:retry_tasks (os user: alice)",
        "command",
        "retry",
        failed.pk,
    )
    assert entry.changes == {"retried_as": attempt.pk, "attempt": 2}


def test_register_models_records_each_model_it_registers(settings, tmp_path: Path):
    folder = small_model_folder(tmp_path / "models" / "Tiny", dimensions=8)
    settings.ALLOWED_SOURCE_ROOTS = [tmp_path]

    run("register_models", str(tmp_path / "models"))
    entry = AuditEntry.objects.get()
    assert (entry.actor, entry.via, entry.action, entry.object_kind, entry.object_id) == (
        "command:register_models (os user: alice)",
        "command",
        "create",
        "embedding_model",
        "tiny",
    )
    assert entry.changes == {"name": [None, "tiny"], "source": [None, str(folder)], "dimensions": [None, 8]}


def test_register_packaged_model_records_the_registration_and_never_changes_an_existing_model(tmp_path: Path):
    run("register_packaged_model")
    # An operator points the model at their own copy (make run registers the packaged model at every start).
    mine = small_model_folder(tmp_path / "my-minilm", dimensions=384)
    model = EmbeddingModel.objects.get()
    model.source = str(mine)
    model.save()

    out = run("register_packaged_model")

    assert EmbeddingModel.objects.get().source == str(mine)
    assert out == (
        f"all-minilm-l6-v2 already registered (source {mine}; left as it is, "
        f"the packaged model is at {packaged_model_dir()})\n"
    )
    created = AuditEntry.objects.get()  # the registration, and no change of the source back
    assert (created.action, created.actor) == ("create", "command:register_packaged_model (os user: alice)")
    assert created.changes["dimensions"] == [None, 384]
