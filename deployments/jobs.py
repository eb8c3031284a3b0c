"""django-q2 entry points. Each takes an id and calls a service; the task row holds everything else."""

from __future__ import annotations

from deployments import services
from deployments.services import workers


def run_task(task_id: str) -> str:
    return services.run_task(task_id)


def sweep_tasks() -> str:
    return str(services.sweep_tasks())


def prove_cluster_runs_jobs(cluster_name: str) -> str:
    """The watchdog's canary: stamps the row of the cluster whose worker runs it."""
    return workers.record_canary(cluster_name)
