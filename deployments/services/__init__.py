"""Write side of the control plane (HackSoft style): everything that changes tasks, leases and the registry.

- tasks:       submit / cancel / retry tasks (the one retry rule), hand them to django-q2 on commit
- transitions: the one door through which a task's status changes
- recording:   timeline events, the pipelines' recorder and their outcome
- engine:      run one task under its model's lease and always finish it
- pipelines:   the deployment and deletion procedures over the serving layer
- leases:      per-model leases and queue positions, and the capacity lock, in the database
- sweeper:     resolve dead workers' tasks, re-send lost dispatches
- workers:     supervised worker clusters, their canary proof and engine events
- watchdog:    run_workers: prove the qcluster runs jobs, restart it when it wedges
- health:      what /readyz and the admin's red banner report
- registry:    the embedding-model registry
- deployer:    the serving layer's deployer, built from settings in one place
- errors:      what the services refuse
"""

from deployments.services.engine import run_task
from deployments.services.errors import (
    ModelNotRegistered,
    RetryRefused,
    TaskConflict,
    TaskError,
    TaskHandOffFailed,
    TransitionNotAllowed,
)
from deployments.services.registry import register_model, register_packaged_model, unregister_model, update_model
from deployments.services.sweeper import ensure_sweep_schedule, sweep_tasks
from deployments.services.tasks import (
    Submission,
    cancel_task,
    ensure_retryable,
    retry_task,
    submit_deletion,
    submit_deployment,
)
from deployments.services.transitions import transition

__all__ = [
    "ModelNotRegistered",
    "RetryRefused",
    "Submission",
    "TaskConflict",
    "TaskError",
    "TaskHandOffFailed",
    "TransitionNotAllowed",
    "cancel_task",
    "ensure_retryable",
    "ensure_sweep_schedule",
    "register_model",
    "register_packaged_model",
    "retry_task",
    "run_task",
    "submit_deletion",
    "submit_deployment",
    "sweep_tasks",
    "transition",
    "unregister_model",
    "update_model",
]
