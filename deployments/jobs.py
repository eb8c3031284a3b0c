"""django-q2 entry points. Each takes a task id and calls a service; the task row holds everything else."""

from __future__ import annotations

from deployments import services
from deployments.models import DeletionTask, DeploymentTask


def run_deployment_task(task_id: str) -> str:
    return services.run_task(DeploymentTask, task_id)


def run_deletion_task(task_id: str) -> str:
    return services.run_task(DeletionTask, task_id)


def sweep_tasks() -> str:
    return str(services.sweep_tasks())
