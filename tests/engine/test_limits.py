"""The engine's time limits fit together: a deploy gives up on its own before django-q2 kills its worker."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from deployments.inference import deploy_time_bound
from deployments.task_config import InvalidTaskConfig, validate_config


def test_the_default_settings_pass_the_check_with_room_for_the_fetch(settings):
    call_command("check")
    assert settings.TASK_TIMEOUT - deploy_time_bound(settings.INFERENCE_READY_TIMEOUT) >= 300


def test_a_ready_timeout_that_does_not_fit_the_worker_timeout_fails_the_check(settings):
    settings.INFERENCE_READY_TIMEOUT = settings.TASK_TIMEOUT / 2
    with pytest.raises(SystemCheckError, match=r"deployments\.E001"):
        call_command("check")


def test_a_tasks_ready_timeout_is_refused_when_the_deploy_could_outlast_the_worker(settings):
    settings.TASK_TIMEOUT = 900
    fits = (900 - deploy_time_bound(0)) / 3 - 1
    assert validate_config("deployment", {"ready_timeout": fits})["ready_timeout"] == fits
    with pytest.raises(InvalidTaskConfig) as refused:
        validate_config("deployment", {"ready_timeout": fits + 2})
    assert list(refused.value.problems) == ["ready_timeout"]
