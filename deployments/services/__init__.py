"""Write side of the control plane (HackSoft style): everything that changes tasks, leases and the registry.

- tasks:     submit / cancel / retry tasks, hand them to django-q2 on commit
- engine:    run one task under its model's lease and always finish it
- pipelines: the deployment and deletion procedures over the serving layer
- leases:    per-model leases in the database
- sweeper:   resolve dead workers' tasks, re-send lost hand-offs
- registry:  the embedding-model registry
- deployer:  the serving layer's deployer, built from settings in one place
"""

from deployments.services.engine import run_task
from deployments.services.registry import register_model, register_packaged_model, unregister_model, update_model
from deployments.services.sweeper import ensure_sweep_schedule, sweep_tasks
from deployments.services.tasks import (
    ModelNotRegistered,
    Submission,
    TaskConflict,
    TaskError,
    TaskHandOffFailed,
    cancel_task,
    retry_task,
    submit_deletion,
    submit_deployment,
)

__all__ = [
    "ModelNotRegistered",
    "Submission",
    "TaskConflict",
    "TaskError",
    "TaskHandOffFailed",
    "cancel_task",
    "ensure_sweep_schedule",
    "register_model",
    "register_packaged_model",
    "retry_task",
    "run_task",
    "submit_deletion",
    "submit_deployment",
    "sweep_tasks",
    "unregister_model",
    "update_model",
]
