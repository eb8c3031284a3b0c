"""System checks (``manage.py check``, run by every management command) on the task engine's limits and the
replicas' memory budget."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, register

from deployments.inference import deploy_time_bound
from deployments.inference.allowed_servers import ALLOW_LIST_VARIABLE, allow_list_problems


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


@register()
def run_source_template_names_the_id(**kwargs: Any) -> list[Error]:
    """MLFLOW_RUN_SOURCE_TEMPLATE turns a run id into its source: without {id} every run would be one source."""
    template = settings.MLFLOW_RUN_SOURCE_TEMPLATE
    if not template or (template.startswith("runs:/") and "{id}" in template):
        return []
    return [
        Error(
            f"MLFLOW_RUN_SOURCE_TEMPLATE={template!r} must be a runs:/ URI holding {{id}}",
            hint="For example runs:/{id}/model, or leave it unset to deploy registered models only.",
            id="deployments.E002",
        )
    ]


@register()
def replica_memory_is_positive(**kwargs: Any) -> list[Error]:
    """With no memory to give, every deploy would be refused at load_green: say so at start instead."""
    if settings.REPLICA_MEMORY_BYTES > 0:
        return []
    return [
        Error(
            f"REPLICA_MEMORY_BYTES={settings.REPLICA_MEMORY_BYTES} leaves no memory for models on a replica",
            hint="Set REPLICA_MEMORY_BYTES to the bytes of weights one replica may hold (unset, it comes from "
            "this machine's memory, which is too small for its replicas).",
            id="deployments.E003",
        )
    ]


@register()
def allowed_tracking_servers_are_origins(**kwargs: Any) -> list[Error]:
    """A malformed MLFLOW_ALLOWED_TRACKING_URIS entry allows nothing: a server the operator meant to allow
    would be refused at every registration and deploy, so say so at start."""
    return [
        Error(
            f"{ALLOW_LIST_VARIABLE}: {problem}",
            hint="List servers as scheme://host[:port], comma-separated, e.g. https://mlflow.example.com; "
            "credentials come from MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME / _PASSWORD.",
            id="deployments.E004",
        )
        for problem in allow_list_problems()
    ]
