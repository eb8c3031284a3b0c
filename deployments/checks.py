"""System checks (``manage.py check``, run by every management command) on the task engine's limits."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, register

from deployments.inference import deploy_time_bound


@register()
def deploy_fits_the_worker_timeout(**kwargs: Any) -> list[Error]:
    """A deploy must give up on its own before django-q2 kills its worker (TASK_TIMEOUT)."""
    bound = deploy_time_bound(settings.INFERENCE_READY_TIMEOUT, settings.INFERENCE_BAKE_SECONDS)
    if bound < settings.TASK_TIMEOUT:
        return []
    return [
        Error(
            f"with INFERENCE_READY_TIMEOUT={settings.INFERENCE_READY_TIMEOUT:g}s and INFERENCE_BAKE_SECONDS="
            f"{settings.INFERENCE_BAKE_SECONDS:g}s a deploy may wait up to {bound:.0f}s on the fleet, "
            f"not below TASK_TIMEOUT={settings.TASK_TIMEOUT}s",
            hint="Lower INFERENCE_READY_TIMEOUT or INFERENCE_BAKE_SECONDS, or raise TASK_TIMEOUT "
            "(leave room for the fetch).",
            id="deployments.E001",
        )
    ]
