"""django-q2 entry points. Each takes an id and calls a service; the task row holds everything else."""

from __future__ import annotations

from deployments import services


def run_task(task_id: str) -> str:
    return services.run_task(task_id)


def sweep_tasks() -> str:
    return str(services.sweep_tasks())
