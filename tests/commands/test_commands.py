"""The bulk management commands: selection, checks before anything is written, exit codes, output."""

from __future__ import annotations

import getpass
import json
import re
import shlex
import subprocess
import sys
import time
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

from deployments.clock import format_time
from deployments.models import DeletionTask, DeploymentTask, EmbeddingModel, TaskEvent, TaskStatus
from tests.support.artifacts import small_model_folder, truncate
from tests.support.factories import (
    DeletionTaskFactory,
    DeploymentTaskFactory,
    EmbeddingModelFactory,
    FailedDeploymentFactory,
    FinishedDeploymentFactory,
    UserFactory,
)
from tests.support.processes import PROJECT_ROOT, worker_env


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def bad(*args: str) -> str:
    """Run a command that must refuse its arguments: exit 2, one line."""
    with pytest.raises(CommandError) as refused:
        run(*args)
    assert refused.value.returncode == 2, refused.value
    assert "\n" not in str(refused.value)
    return str(refused.value)


def numbers(text: str) -> list[int]:
    """The whole numbers a line of output names, in order (counts, limits)."""
    return [int(n) for n in re.findall(r"\d+", text)]


def totals(summary: str) -> tuple[int, dict[str, int]]:
    """--wait's last line, "<n> task(s) in <t>s: done 5, failed 1": the task count and the count per status."""
    head, _, counts = summary.rpartition(": ")
    return int(head.split()[0]), {status: int(n) for status, n in (part.split() for part in counts.split(", "))}


# -- deploy_models / delete_models ----------------------------------------------------------------


@pytest.mark.django_db
def test_deploy_models_by_id_creates_and_hands_over_one_task_each(django_capture_on_commit_callbacks):
    EmbeddingModelFactory(id="cmd-a"), EmbeddingModelFactory(id="cmd-b")
    DeploymentTaskFactory(embedding_model_id="cmd-a", status=TaskStatus.DONE)  # the queue goes on from here

    with django_capture_on_commit_callbacks(execute=True):
        out, _ = run("deploy_models", "cmd-a", "cmd-b", "cmd-a")

    tasks = {t.embedding_model_id: t for t in DeploymentTask.objects.filter(status="pending")}
    assert set(tasks) == {"cmd-a", "cmd-b"}  # a model named twice gets one task
    assert (tasks["cmd-a"].sequence, tasks["cmd-b"].sequence) == (2, 1)
    for task in tasks.values():
        assert task.dispatched_at and task.requested_by == f"command:deploy_models (os user: {getpass.getuser()})"
        assert task.metadata == {"attempt": 1, "retry_of": None} and task.config == {}
        assert str(task.pk) in out
    assert numbers(out.splitlines()[0])[0] == 2  # tasks created


@pytest.mark.django_db
def test_deploy_models_from_a_file_with_config(tmp_path: Path, django_capture_on_commit_callbacks):
    for model_id in ("f-1", "f-2", "f-3"):
        EmbeddingModelFactory(id=model_id)
    id_file = tmp_path / "ids.txt"
    id_file.write_text("# models to roll\nf-1\n\nf-2   # the big one\n")

    with django_capture_on_commit_callbacks(execute=True):
        run("deploy_models", "f-3", "--file", str(id_file), "--config", '{"expected_dimensions": 384}')

    tasks = DeploymentTask.objects.all()
    assert sorted(t.embedding_model_id for t in tasks) == ["f-1", "f-2", "f-3"]
    assert all(t.config == {"expected_dimensions": 384} for t in tasks)


@pytest.mark.django_db
def test_filters_all_and_state(django_capture_on_commit_callbacks):
    EmbeddingModelFactory(id="s-live", state="deployed", live_revision="r")
    EmbeddingModelFactory(id="s-idle")

    with django_capture_on_commit_callbacks(execute=True):
        run("delete_models", "--state", "deployed")
        run("deploy_models", "--all")
    assert list(DeletionTask.objects.values_list("embedding_model_id", flat=True)) == ["s-live"]
    assert sorted(DeploymentTask.objects.values_list("embedding_model_id", flat=True)) == ["s-idle", "s-live"]

    out, _ = run("delete_models", "--state", "deleting")
    assert DeletionTask.objects.count() == 1 and len(out.strip().splitlines()) == 1  # nothing created or listed


@pytest.mark.django_db
def test_dry_run_creates_nothing():
    EmbeddingModelFactory(id="dry")
    out, _ = run("deploy_models", "--all", "--dry-run", "--config", '{"ready_timeout": 60}')
    summary, config, model_ids = re.fullmatch(r"(.*?)(\{.*\}): (.*)", out.strip()).groups()
    assert numbers(summary) == [1]  # tasks it would create
    assert json.loads(config) == {"ready_timeout": 60.0}  # the config as validated
    assert model_ids.split(", ") == ["dry"]
    assert not DeploymentTask.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "named"),
    [
        # What the one line must name: the option at fault, and the offending ids, keys or values.
        (["known", "ghost-1", "ghost-2"], ["'ghost-1'", "'ghost-2'"]),
        (["ghost"], ["'ghost'"]),
        (["../etc"], ["'../etc'"]),
        (["known", "--config", "{not json"], ["--config"]),
        (["known", "--config", "[1]"], ["--config"]),
        (["known", "--config", '{"replicas": 2}'], ["--config", "replicas"]),
        (["known", "--config", '{"expected_dimensions": "384"}'], ["--config", "expected_dimensions"]),
        (["--file", "/no/such/file"], ["--file", "/no/such/file"]),
        (["known", "--all"], ["MODEL_ID", "--all"]),
        (["--state", "sleeping"], ["--state", "sleeping"]),
        ([], ["--file", "--all", "--state"]),
    ],
)
def test_bad_arguments_exit_2_with_one_line_and_create_nothing(args, named):
    EmbeddingModelFactory(id="known")
    message = bad("deploy_models", *args)
    assert all(part in message for part in named), message
    assert "'known'" not in message  # a registered id is never blamed
    assert not DeploymentTask.objects.exists()


@pytest.mark.django_db
def test_an_empty_id_file_is_a_bad_argument(tmp_path: Path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n\n")
    message = bad("delete_models", "--file", str(empty))
    assert message.startswith("--file") and str(empty) in message
    assert not DeletionTask.objects.exists()


@pytest.mark.django_db
def test_a_batch_takes_a_fixed_number_of_statements_besides_the_queue_messages(django_capture_on_commit_callbacks):
    EmbeddingModel.objects.bulk_create([EmbeddingModel(id=f"batch-{i:03d}", source="/x", name="") for i in range(300)])
    with CaptureQueriesContext(connection) as queries, django_capture_on_commit_callbacks(execute=True):
        started = time.monotonic()
        run("deploy_models", "--all")
        elapsed = time.monotonic() - started
    ours = [q["sql"] for q in queries.captured_queries if "django_q" not in q["sql"]]
    assert DeploymentTask.objects.filter(dispatched_at__isnull=False).count() == 300
    assert len(ours) < 40, len(ours)
    assert elapsed < 10


def broker_down(*args, **kwargs):
    raise ConnectionError("broker unreachable")


@pytest.mark.django_db(transaction=True)
def test_a_batch_the_queue_refused_is_created_reported_and_exits_1(monkeypatch, settings):
    settings.TASK_HANDOFF_GRACE_SECONDS = 30
    EmbeddingModelFactory(id="late-a"), EmbeddingModelFactory(id="late-b")
    monkeypatch.setattr("deployments.services.tasks.async_task", broker_down)
    out, err = StringIO(), StringIO()

    with pytest.raises(CommandError) as failed:
        call_command("deploy_models", "late-a", "late-b", "--wait", stdout=out, stderr=err)

    assert failed.value.returncode == 1
    assert out.getvalue() == "Created 2 deployment task(s).\n"
    assert str(failed.value).startswith("2 tasks were created but could not be handed to the task queue")
    assert "the sweeper sends them again once they have waited 30 s" in str(failed.value)
    assert str(failed.value).endswith("(the queue said: broker unreachable)")
    tasks = DeploymentTask.objects.all()
    assert {(t.embedding_model_id, t.status, t.dispatched_at) for t in tasks} == {
        ("late-a", "pending", None),
        ("late-b", "pending", None),
    }


@pytest.mark.django_db(transaction=True)
def test_exit_code_2_and_one_line_from_a_real_process():
    result = subprocess.run(
        [sys.executable, "manage.py", "deploy_models", "no-such-model"],
        cwd=PROJECT_ROOT,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    (error,) = result.stderr.strip().splitlines()  # one line
    assert error.startswith("CommandError:") and "'no-such-model'" in error
    assert result.stdout == ""


# -- --wait against a running cluster --------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_wait_follows_a_batch_to_the_end_with_a_progress_bar_and_a_summary(settings, qcluster):
    settings.INFERENCE_DEPLOYER_FACTORY = "tests.support.probes.build_probe_deployer"
    for i in range(6):
        EmbeddingModelFactory(id=f"wait-{i}")
    qcluster(Q_WORKERS="4")

    out, err = run("deploy_models", "--all", "--wait", "--poll", "0.2", "--timeout", "120")

    assert DeploymentTask.objects.filter(status="done").count() == 6
    assert "deployments: 100%" in err and "6/6" in err  # tqdm on stderr
    lines = out.splitlines()
    assert lines[1].split() == ["task", "model", "status", "took", "detail"]
    assert sum(" wait-" in line and " done " in line for line in lines) == 6
    assert totals(lines[-1]) == (6, {"done": 6})


@pytest.mark.django_db(transaction=True)
def test_wait_exits_1_when_a_task_fails(settings, qcluster):
    settings.INFERENCE_DEPLOYER_FACTORY = "tests.support.probes.build_exploding_deployer"
    EmbeddingModelFactory(id="doomed")
    qcluster()

    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError) as failed:
        call_command("deploy_models", "doomed", "--wait", "--poll", "0.2", "--timeout", "120", stdout=out, stderr=err)

    assert failed.value.returncode == 1
    assert numbers(str(failed.value)) == [1, 1]  # not done, of all
    assert totals(out.getvalue().splitlines()[-1]) == (1, {"failed": 1})
    assert "deployer crashed" in out.getvalue()  # the injected fault, in the task's detail column


@pytest.mark.mlserver
@pytest.mark.django_db(transaction=True)
def test_wait_through_the_real_green_deployer_and_mlserver(inference_settings, qcluster, envoy):
    EmbeddingModelFactory(id="ops-real")
    cluster = qcluster()

    out, _ = run("deploy_models", "ops-real", "--config", '{"expected_dimensions": 384}', "--wait", "--poll", "0.2")
    task = DeploymentTask.objects.get(embedding_model_id="ops-real")
    assert task.status == TaskStatus.DONE, f"{task.detail}\n{cluster.log_tail()}"
    assert totals(out.splitlines()[-1]) == (1, {"done": 1}) and task.metadata["revision"] in out
    model = EmbeddingModel.objects.get(pk="ops-real")
    assert model.state == "deployed" and model.endpoint == f"{envoy.url}/v2/models/ops-real/infer"

    out, _ = run("delete_models", "ops-real", "--wait", "--poll", "0.2")
    assert DeletionTask.objects.get(embedding_model_id="ops-real").status == TaskStatus.DONE
    assert EmbeddingModel.objects.get(pk="ops-real").state == "not_deployed"


# -- register_models ------------------------------------------------------------------------------


@pytest.fixture
def model_folders(settings, tmp_path: Path) -> Path:
    root = tmp_path / "models"
    small_model_folder(root / "MiniLM_L6", 384)
    small_model_folder(root / "team" / "e5-large", 1024)
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a model")
    settings.ALLOWED_SOURCE_ROOTS = [tmp_path]
    return root


@pytest.mark.django_db
def test_register_models_scans_a_directory_and_registers_each(model_folders: Path):
    out, _ = run("register_models", str(model_folders))
    assert {m.id: (m.dimensions, m.source) for m in EmbeddingModel.objects.all()} == {
        "minilm_l6": (384, str(model_folders / "MiniLM_L6")),
        "e5-large": (1024, str(model_folders / "team" / "e5-large")),
    }
    assert numbers(out.splitlines()[-1]) == [2, 0]  # registered, already registered

    out, _ = run("register_models", str(model_folders))
    assert numbers(out.splitlines()[-1]) == [0, 2]
    assert EmbeddingModel.objects.count() == 2


def refused(*args: str, returncode: int = 2) -> tuple[str, str, str]:
    """Run a command that must exit ``returncode``: (its one-line error, its stdout, its stderr)."""
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError) as error:
        call_command(*args, stdout=out, stderr=err)
    assert error.value.returncode == returncode, error.value
    assert "\n" not in str(error.value)
    return str(error.value), out.getvalue(), err.getvalue()


@pytest.mark.django_db
def test_register_models_checks_everything_before_registering_anything(model_folders: Path, tmp_path: Path):
    twin = small_model_folder(model_folders / "other" / "MiniLM_L6", 384)  # same id as another folder
    message, _, err = refused("register_models", str(model_folders))
    assert message.startswith("nothing registered: 2 of 3 model(s) invalid")
    clash = err.splitlines()
    assert len(clash) == 2 and all("'minilm_l6'" in line for line in clash)
    assert all(str((model_folders / "MiniLM_L6").resolve()) in line and str(twin.resolve()) in line for line in clash)
    assert not EmbeddingModel.objects.exists()

    assert str((model_folders / "notes").resolve()) in bad("register_models", str(model_folders / "notes"))
    assert str(tmp_path / "missing") in bad("register_models", str(tmp_path / "missing"))
    outside = bad("register_models", "/usr")  # names the source and the allowed root it is not under
    assert "/usr" in outside and str(tmp_path) in outside


@pytest.mark.django_db
def test_register_models_names_every_damaged_file_and_registers_nothing(model_folders: Path):
    minilm = model_folders / "MiniLM_L6"
    truncate(minilm / "model.safetensors", 200)
    (model_folders / "team" / "e5-large" / "tokenizer.json").write_text('{"version": ')
    message, _, err = refused("register_models", str(model_folders))
    assert message.startswith("nothing registered: 2 of 2 model(s) invalid")
    assert f"model.safetensors in {minilm} is truncated" in err
    assert f"tokenizer.json in {model_folders / 'team' / 'e5-large'} is not valid JSON" in err
    assert not EmbeddingModel.objects.exists()


@pytest.mark.django_db
def test_register_models_names_every_invalid_folder_even_in_a_dry_run_and_skips_them_when_asked(model_folders: Path):
    small_model_folder(model_folders / "bge-small", 384)
    damaged = model_folders / "team" / "e5-large"
    (damaged / "tokenizer.json").write_text('{"version": ')

    def statuses(out: str) -> dict[str, str]:
        return {line.split()[0]: line.split(maxsplit=3)[-1].strip() for line in out.splitlines()[2:] if "  " in line}

    for dry_run in (["--dry-run"], []):  # one damaged folder stops the batch, but the report names them all
        message, out, err = refused("register_models", str(model_folders), *dry_run)
        assert message == (
            "nothing registered: 1 of 3 model(s) invalid (each problem above); fix them, or pass --skip-invalid "
            "to register the other 2 new model(s)"
        )
        assert statuses(out) == {"bge-small": "new", "minilm_l6": "new", "e5-large": "invalid"}
        (problem,) = err.splitlines()
        assert problem.startswith(f"invalid: tokenizer.json in {damaged} is not valid JSON")
    assert not EmbeddingModel.objects.exists()

    message, out, _ = refused("register_models", str(model_folders), "--skip-invalid", "--dry-run", returncode=1)
    assert out.splitlines()[-1] == "Dry run: would register 2 model(s); 1 skipped as invalid."
    assert message == "1 of 3 model(s) invalid (each problem above): skipped"
    assert not EmbeddingModel.objects.exists()

    message, out, err = refused("register_models", str(model_folders), "--skip-invalid", returncode=1)
    assert out.splitlines()[-1] == "Registered 2 model(s); 0 already registered; 1 skipped as invalid."
    assert err.startswith("invalid: tokenizer.json")
    assert sorted(EmbeddingModel.objects.values_list("id", flat=True)) == ["bge-small", "minilm_l6"]

    _, out, _ = refused("register_models", str(model_folders), "--skip-invalid", returncode=1)
    assert out.splitlines()[-1] == "Registered 0 model(s); 2 already registered; 1 skipped as invalid."
    assert statuses(out) == {
        "bge-small": "already registered",
        "minilm_l6": "already registered",
        "e5-large": "invalid",
    }

    (damaged / "tokenizer.json").write_text((model_folders / "bge-small" / "tokenizer.json").read_text())
    out, _ = run("register_models", str(model_folders), "--skip-invalid")  # nothing skipped: exit 0
    assert out.splitlines()[-1] == "Registered 1 model(s); 2 already registered."


@pytest.mark.django_db
def test_register_models_dry_run(model_folders: Path):
    out, _ = run("register_models", str(model_folders), "--dry-run")
    assert numbers(out.splitlines()[-1]) == [2]  # would register
    assert not EmbeddingModel.objects.exists()


# -- retry_tasks ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_retry_tasks_by_status_kind_and_age(django_capture_on_commit_callbacks):
    model = EmbeddingModelFactory(id="rt")
    recent_failure = FailedDeploymentFactory(embedding_model_id=model.id)
    old_failure = FailedDeploymentFactory(embedding_model_id=model.id)
    DeploymentTask.objects.filter(pk=old_failure.pk).update(created_at=timezone.now() - timedelta(days=3))
    refused_deletion = DeletionTaskFactory(embedding_model_id=model.id, status=TaskStatus.REFUSED)
    FinishedDeploymentFactory(embedding_model_id=model.id)

    out, _ = run("retry_tasks", "--newer-than", "1d", "--dry-run")
    assert str(recent_failure.pk) in out and str(old_failure.pk) not in out
    assert numbers(out.splitlines()[-1]) == [1]  # would retry
    assert DeploymentTask.objects.count() == 3

    with django_capture_on_commit_callbacks(execute=True):
        out, _ = run("retry_tasks", "--newer-than", "1d")
    retry = DeploymentTask.objects.get(retry_of=recent_failure)
    assert (retry.attempt, retry.status) == (2, "pending") and retry.dispatched_at
    assert str(retry.pk) in out and numbers(out.splitlines()[-1]) == [1, 0]  # retried, not retried

    out, _ = run("retry_tasks", "--newer-than", "1d")  # the failure was retried already: nothing left
    assert DeploymentTask.objects.count() == 4 and len(out.strip().splitlines()) == 1  # nothing retried or listed

    with django_capture_on_commit_callbacks(execute=True):
        run("retry_tasks", "--kind", "deletion", "--status", "refused,canceled")
    assert DeletionTask.objects.get(retry_of=refused_deletion).attempt == 2

    with django_capture_on_commit_callbacks(execute=True):
        run("retry_tasks", "--older-than", "2d")
    assert DeploymentTask.objects.filter(retry_of=old_failure).exists()


@pytest.mark.django_db(transaction=True)
def test_retry_tasks_whose_attempts_the_queue_refused_exits_1(monkeypatch):
    failed = FailedDeploymentFactory()
    monkeypatch.setattr("deployments.services.tasks.async_task", broker_down)
    out, err = StringIO(), StringIO()

    with pytest.raises(CommandError) as waiting:
        call_command("retry_tasks", stdout=out, stderr=err)

    assert waiting.value.returncode == 1
    attempt = DeploymentTask.objects.get(retry_of=failed)
    assert (attempt.status, attempt.dispatched_at) == ("pending", None)
    assert attempt.pk in out.getvalue() and "not yet handed to the task queue" in out.getvalue()
    assert out.getvalue().splitlines()[-1] == "Retried 1 task(s); 0 not retried."
    assert str(waiting.value).startswith("1 new attempt(s) wait for the sweeper")


@pytest.mark.django_db
def test_retry_tasks_refuses_bad_arguments_and_too_many_matches():
    FailedDeploymentFactory(), FailedDeploymentFactory()
    status = bad("retry_tasks", "--status", "done")
    assert status.startswith("--status:") and "done" in status
    kind = bad("retry_tasks", "--kind", "upgrade")
    assert kind.startswith("--kind:") and "upgrade" in kind
    duration = bad("retry_tasks", "--newer-than", "yesterday")
    assert duration.startswith("--newer-than:") and "'yesterday'" in duration
    limit = bad("retry_tasks", "--limit", "1")
    assert "--limit" in limit and numbers(limit) == [1]
    assert DeploymentTask.objects.count() == 2


# -- prune_tasks ----------------------------------------------------------------------------------


def pruned(out: str) -> dict[str, int]:
    """prune_tasks' report, "... 4 deployment task(s) and 0 deletion task(s) ...": the count per kind."""
    return {kind: int(n) for n, kind in re.findall(r"(\d+) (\w+) task\(s\)", out)}


@pytest.mark.django_db
def test_prune_tasks_keeps_the_latest_per_model_and_anything_unfinished():
    long_ago = timezone.now() - timedelta(days=100)
    busy = EmbeddingModelFactory(id="busy")
    old_done = [FinishedDeploymentFactory(embedding_model_id=busy.id) for _ in range(4)]
    old_pending = DeploymentTaskFactory(embedding_model_id=busy.id)
    newest = FinishedDeploymentFactory(embedding_model_id=busy.id)
    lonely = FailedDeploymentFactory(embedding_model_id=EmbeddingModelFactory(id="lonely").id)
    DeploymentTask.objects.exclude(pk=newest.pk).update(created_at=long_ago)
    DeploymentTask.objects.filter(pk=newest.pk).update(created_at=long_ago + timedelta(days=1))

    out, _ = run("prune_tasks", "--older-than", "30d", "--dry-run")
    assert pruned(out) == {"deployment": 4, "deletion": 0}
    assert DeploymentTask.objects.count() == 7  # a dry run deletes nothing
    out, _ = run("prune_tasks", "--older-than", "30d")
    assert pruned(out) == {"deployment": 4, "deletion": 0}

    left = set(DeploymentTask.objects.values_list("pk", flat=True))
    assert left == {old_pending.pk, newest.pk, lonely.pk}
    assert not TaskEvent.objects.filter(task_id__in=[t.pk for t in old_done]).exists()


@pytest.mark.django_db
def test_prune_tasks_keep_latest_n():
    model = EmbeddingModelFactory(id="keep")
    tasks = [FinishedDeploymentFactory(embedding_model_id=model.id) for _ in range(5)]
    run("prune_tasks", "--keep-latest", "2", "--kind", "deployment")
    assert set(DeploymentTask.objects.values_list("pk", flat=True)) == {tasks[3].pk, tasks[4].pk}


@pytest.mark.django_db
def test_prune_tasks_needs_to_be_told_what_to_prune():
    FinishedDeploymentFactory()
    unsaid = bad("prune_tasks")
    assert "--older-than" in unsaid and "--keep-latest" in unsaid
    too_few = bad("prune_tasks", "--keep-latest", "0")
    assert too_few.startswith("--keep-latest") and numbers(too_few) == [1]  # the least it accepts
    assert DeploymentTask.objects.count() == 1


# -- tasks ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_tasks_prints_recent_tasks_newest_first_with_filters():
    model = EmbeddingModelFactory(id="tbl")
    failed = FailedDeploymentFactory(embedding_model_id=model.id)
    done = FinishedDeploymentFactory(embedding_model_id=model.id)
    deletion = DeletionTaskFactory(embedding_model_id=model.id)
    other = FinishedDeploymentFactory()

    out, _ = run("tasks")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["created", "kind", "task"]
    order = [next(i for i, line in enumerate(lines) if str(t.pk) in line) for t in (other, deletion, done, failed)]
    assert order == sorted(order)  # newest first, both kinds merged

    out, _ = run("tasks", "--status", "failed")
    assert str(failed.pk) in out and str(done.pk) not in out and "expected 384" in out
    out, _ = run("tasks", "--kind", "deletion")
    assert str(deletion.pk) in out and str(done.pk) not in out
    out, _ = run("tasks", "--model", "tbl", "--limit", "2")
    assert len(out.splitlines()) == 4 and str(other.pk) not in out
    out, _ = run("tasks", "--since", "1h", "--status", "canceled")
    assert len(out.strip().splitlines()) == 1  # no table: nothing matches
    assert not any(str(t.pk) in out for t in (failed, done, deletion, other))
    unknown = bad("tasks", "--status", "lost")
    assert unknown.startswith("--status:") and "lost" in unknown


@pytest.mark.django_db
def test_tasks_finds_tasks_by_the_short_id_the_admin_shows_and_by_part_of_a_model_id():
    minilm = EmbeddingModelFactory(id="all-minilm-l6-v2")
    wanted = FailedDeploymentFactory(embedding_model_id=minilm.id)
    other = FinishedDeploymentFactory(embedding_model_id=EmbeddingModelFactory(id="bge-small").id)

    out, _ = run("tasks", "--task", str(wanted.pk)[:8])
    assert str(wanted.pk) in out and str(other.pk) not in out
    out, _ = run("tasks", "--model", "MiniLM")
    assert str(wanted.pk) in out and str(other.pk) not in out
    out, _ = run("tasks", "--model", "small", "--task", str(wanted.pk)[:8])
    assert out.strip() == "No task matches."
    refused = bad("tasks", "--task", "a b")
    assert refused.startswith("--task:") and "may contain only" in refused


@pytest.mark.django_db
def test_tasks_says_why_a_pending_task_waits():
    model = EmbeddingModelFactory(id="tw")
    first = DeploymentTaskFactory(embedding_model_id=model.id)
    second = DeletionTaskFactory(embedding_model_id=model.id)
    out, _ = run("tasks", "--model", "tw")
    [second_line] = [line for line in out.splitlines() if str(second.pk) in line]
    assert f"queued behind {first.pk} (deployment" in second_line  # cut after the whole id, in a narrow cell
    [first_line] = [line for line in out.splitlines() if re.search(rf"deployment +{first.pk} ", line)]
    first.refresh_from_db()
    assert f"not yet sent to the queue (since {format_time(first.created_at)})" in first_line


# -- create_token, as make run calls it -----------------------------------------------------------------


def run_stack_token_command() -> list[str]:
    """The arguments scripts/run-stack.sh gives manage.py to make the API token it prints."""
    script = (PROJECT_ROOT / "scripts" / "run-stack.sh").read_text()
    (line,) = re.findall(r"^token=\$\(\$BIN/python manage\.py (create_token [^)]*)\)$", script, re.MULTILINE)
    return shlex.split(line)


@pytest.mark.django_db(transaction=True)  # the command runs in another process
def test_the_token_make_run_prints_works():
    UserFactory(username="admin", is_staff=True, is_superuser=True)
    EmbeddingModelFactory(id="minilm")
    args = run_stack_token_command()
    assert args[:2] == ["create_token", "admin"]
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT_ROOT,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()  # $(...) keeps stdout alone
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert "expires" in result.stderr and key not in result.stderr
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    response = client.get("/models/minilm")
    assert response.status_code == 200 and response.json()["id"] == "minilm"
    assert AuthToken.objects.get().expiry is not None  # make run's token expires (--expires-days)
