"""Routine jobs log at DEBUG: the watchdog's canary (every WORKERS_CANARY_SECONDS) and the sweep.

django-q2 writes three or four INFO lines per job it runs (enqueued, processing, processed, and for
a schedule "created task"). For the canary that is a line every second or two that proves only that
nothing happened, and would drown what an operator must see (a restart, a wedge, a failure). This
filter on django-q2's logger lowers those lines to DEBUG, so ``LOG_LEVEL=DEBUG`` still shows them;
a routine job that fails (django-q2 logs it at ERROR) is left as it is.

Imported by the LOGGING setting before the app registry is ready, so it imports no models.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

CANARY_JOB = "deployments.jobs.prove_cluster_runs_jobs"
SWEEP_JOB = "deployments.jobs.sweep_tasks"
SWEEP_SCHEDULE_NAME = "deployments: sweep tasks"
ROUTINE_JOBS = (CANARY_JOB, SWEEP_JOB)
# How django-q2's INFO lines name a job: its function in quotes, or the schedule that created it.
_ROUTINE_MARKS = (*(f"'{job}'" for job in ROUTINE_JOBS), f"[{SWEEP_SCHEDULE_NAME}]")
# django-q2's "Enqueued [queue] <id>" names no job: the job is the one its pre_enqueue signal just sent,
# in the same thread, right before.
_last_enqueued = threading.local()


def note_enqueued_job(sender: object, task: dict[str, Any], **kwargs: object) -> None:
    """django-q2's pre_enqueue receiver: remember whether the job about to be enqueued is routine."""
    _last_enqueued.routine = task.get("func") in ROUTINE_JOBS


class RoutineJobsAtDebug(logging.Filter):
    """Lowers django-q2's INFO lines about routine jobs to DEBUG (and drops them below that level)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not self._is_routine(record.getMessage()):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)

    @staticmethod
    def _is_routine(message: str) -> bool:
        if message.startswith("Enqueued ["):
            return getattr(_last_enqueued, "routine", False)
        return any(mark in message for mark in _ROUTINE_MARKS)
