"""How a task's progress is written down: timeline events, the pipeline's recorder and its outcome.

A module of its own so that the engine (which runs pipelines) and the pipelines (which report
through the recorder and return an outcome) both import it, and not each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

from deployments import metrics
from deployments.inference import StageEvent
from deployments.models import Task, TaskEvent, TaskStatus
from deployments.services.faults import hold_if_asked
from deployments.services.leases import Fence
from deployments.services.reconnect import reconnecting


@dataclass
class Outcome:
    """How a pipeline ended: the final status, a one-line detail and what to merge into metadata."""

    status: str
    detail: str
    metadata: dict[str, Any] = field(default_factory=dict)


def record_event(
    task: Task, stage: str, state: str, message: str = "", duration_s: float | None = None, actor: str = ""
) -> TaskEvent:
    return TaskEvent.objects.create(
        task_id=task.pk, stage=stage, state=state, message=message, duration_s=duration_s, actor=actor
    )


class TaskRecorder:
    """The serving layer's progress callback: each StageEvent becomes a TaskEvent and a metadata entry.

    Only while the attempt holds its model's lease: a superseded attempt (``fence.check`` raises
    FenceLost) writes nothing more to its task.
    """

    def __init__(self, task: Task, owner: str, fence: Fence | None = None):
        self.task = task
        self.owner = owner
        self.fence = fence
        self.current_stage: str | None = None
        self.failed_stage: str | None = None

    @reconnecting
    def __call__(self, event: StageEvent) -> None:
        if self.fence is not None:
            self.fence.check()
        self.current_stage = event.stage if event.state == "started" else None
        if event.state == "failed":
            self.failed_stage = event.stage
        record_event(self.task, event.stage, event.state, event.message, event.duration_s, actor=self.owner)
        stages = self.task.metadata.setdefault("stages", {})
        entry = {"state": event.state, "message": event.message, "duration_s": event.duration_s}
        # When the stage began (and how long it is meant to last): what a running task's detail says.
        if event.state == "started":
            entry["started_at"] = timezone.now().isoformat()
            if event.planned_s is not None:
                entry["planned_s"] = event.planned_s
        elif started_at := stages.get(event.stage, {}).get("started_at"):
            entry["started_at"] = started_at
        stages[event.stage] = entry
        if event.duration_s is not None:
            self.task.metadata.setdefault("timings", {})[event.stage] = event.duration_s
        # Conditional on still owning the task: a worker the sweeper gave up on must not write over it.
        rows = Task.objects.filter(pk=self.task.pk, status=TaskStatus.PROCESSING, lease_owner=self.owner)
        if self.fence is not None:
            rows = rows.filter(self.fence.condition)
        rows.update(metadata=self.task.metadata, updated_at=timezone.now())
        if event.state != "started" and event.duration_s is not None:
            metrics.observe_stage(self.task.kind, event.stage, event.state, event.duration_s)
        if event.state == "started":
            hold_if_asked(event.stage, self.task.attempt)
