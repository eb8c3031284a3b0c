"""The engine's time limits fit together: a deploy gives up on its own before django-q2 kills its worker."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError

from deployments.inference import deploy_time_bound
from deployments.task_config import InvalidTaskConfig, validate_config


def test_the_default_settings_pass_the_check_with_room_for_the_fetch(settings):
    call_command("check")
    bound = deploy_time_bound(settings.INFERENCE_READY_TIMEOUT, settings.INFERENCE_BAKE_SECONDS)
    assert settings.TASK_TIMEOUT - bound >= 300


@pytest.mark.parametrize("setting", ["INFERENCE_READY_TIMEOUT", "INFERENCE_BAKE_SECONDS"])
def test_a_ready_timeout_or_bake_that_does_not_fit_the_worker_timeout_fails_the_check(settings, setting):
    setattr(settings, setting, settings.TASK_TIMEOUT)
    with pytest.raises(SystemCheckError, match=r"deployments\.E001"):
        call_command("check")


@pytest.mark.parametrize("key", ["ready_timeout", "bake_seconds"])
def test_a_tasks_ready_timeout_or_bake_is_refused_when_the_deploy_could_outlast_the_worker(settings, key):
    settings.TASK_TIMEOUT = 900
    settings.INFERENCE_READY_TIMEOUT, settings.INFERENCE_BAKE_SECONDS = 100, 0
    other = {"ready_timeout": 100, "bake_seconds": 0}
    fits = 900 - deploy_time_bound(**other) - 1 + other[key]
    assert validate_config("deployment", {key: fits})[key] == fits
    with pytest.raises(InvalidTaskConfig) as refused:
        validate_config("deployment", {key: fits + 2})
    assert list(refused.value.problems) == [key]


def real_ready_timeout_limit(settings) -> float:
    """The largest ready_timeout a deploy may ask for with the default bake: below it, the bound fits."""
    return settings.TASK_TIMEOUT - deploy_time_bound(0, settings.INFERENCE_BAKE_SECONDS)


@pytest.mark.parametrize("task_timeout,asked", [(1800, 5000), (7200, 7100)])
def test_a_ready_timeout_over_the_real_limit_names_that_limit_and_why(settings, task_timeout, asked):
    settings.TASK_TIMEOUT = task_timeout
    limit = real_ready_timeout_limit(settings)
    assert validate_config("deployment", {"ready_timeout": limit - 1})  # just below: accepted
    with pytest.raises(InvalidTaskConfig) as refused:
        validate_config("deployment", {"ready_timeout": asked})
    (message,) = refused.value.problems["ready_timeout"]
    assert f"below {limit:g}" in message and f"TASK_TIMEOUT={task_timeout}s" in message
    assert "3600" not in message  # no fixed maximum that is not the real one


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_number_that_is_not_finite_is_refused(value):
    with pytest.raises(InvalidTaskConfig) as refused:
        validate_config("deployment", {"ready_timeout": value})
    assert list(refused.value.problems) == ["ready_timeout"]


def test_the_api_and_the_commands_name_the_same_real_limit(settings, api, packaged_model):
    limit = real_ready_timeout_limit(settings)
    response = api.post("/deploy", {"embedding_model_id": "minilm", "config": {"ready_timeout": 5000}}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["detail"].startswith("config.ready_timeout")
    (api_message,) = body["errors"]["config"]["ready_timeout"]
    assert f"below {limit:g}" in api_message and "TASK_TIMEOUT=1800s" in api_message

    with pytest.raises(CommandError) as refused:
        call_command("deploy_models", "minilm", "--config", '{"ready_timeout": 5000}', stdout=StringIO())
    assert refused.value.returncode == 2
    assert f"below {limit:g}" in str(refused.value) and "TASK_TIMEOUT=1800s" in str(refused.value)


@pytest.mark.parametrize("budget", [0, -1])
def test_a_replica_memory_budget_that_leaves_nothing_fails_the_check(settings, budget):
    settings.REPLICA_MEMORY_BYTES = budget
    with pytest.raises(SystemCheckError, match=r"deployments\.E003.*REPLICA_MEMORY_BYTES"):
        call_command("check")


def test_a_malformed_allowed_tracking_server_fails_the_check(monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOWED_TRACKING_URIS", "https://mlflow.example.com, https://user:pw@mlflow.example.com")
    with pytest.raises(SystemCheckError, match=r"deployments\.E004.*MLFLOW_ALLOWED_TRACKING_URIS.*user or password"):
        call_command("check")
    monkeypatch.setenv("MLFLOW_ALLOWED_TRACKING_URIS", "https://mlflow.example.com, s3://models-bucket")
    call_command("check")
