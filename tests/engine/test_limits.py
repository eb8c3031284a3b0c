"""The engine's time limits fit together: a deploy gives up on its own before django-q2 kills its worker."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

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
