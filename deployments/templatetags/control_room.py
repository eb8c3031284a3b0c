"""The admin dashboard, as an inclusion tag the overridden admin index calls (templates/admin/index.html).

A tag rather than a custom AdminSite: the project keeps Django's default admin site and its URLs,
and the index only gains a block. It reads through ``selectors.dashboard`` and renders nothing else.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.urls import reverse
from django.utils import timezone

from deployments import selectors
from deployments.admin import STATUS_COLOURS, human_duration, task_admin_url
from deployments.models import TaskStatus

register = template.Library()


@register.inclusion_tag("admin/deployments/dashboard.html")
def control_room_dashboard() -> dict[str, Any]:
    dash = selectors.dashboard()
    now = timezone.now()
    lists = {
        kind: reverse(f"admin:deployments_{task_model._meta.model_name}_changelist")
        for kind, task_model in selectors.TASK_MODELS.items()
    }
    in_flight = [
        {"kind": kind, "url": lists[kind], "pending": counts["pending"], "processing": counts["processing"]}
        for kind, counts in dash.in_flight.items()
    ]
    outcomes = [
        {
            "kind": kind,
            "url": lists[kind],
            "cells": [
                {"status": status, "count": counts[status], "colour": STATUS_COLOURS[status]}
                for status in TaskStatus.values
            ],
        }
        for kind, counts in dash.outcomes_24h.items()
    ]
    running = [
        {
            "task": task,
            "kind": task.KIND,
            "url": task_admin_url(type(task), task.pk),
            "short_id": str(task.pk)[:8],
            # The stage the worker is in now: the one its metadata records as started and not yet ended.
            "stage": next(
                (
                    stage
                    for stage, info in (task.metadata.get("stages") or {}).items()
                    if info.get("state") == "started"
                ),
                "",
            ),
            "duration": human_duration((now - (task.started_at or task.created_at)).total_seconds()),
        }
        for task in dash.running
    ]
    failures = [
        {
            "task": task,
            "kind": task.KIND,
            "url": task_admin_url(type(task), task.pk),
            "short_id": str(task.pk)[:8],
            "colour": STATUS_COLOURS[task.status],
        }
        for task in dash.latest_failures
    ]
    return {
        "dash": dash,
        "in_flight": in_flight,
        "statuses": TaskStatus.choices,
        "outcomes": outcomes,
        "running": running,
        "failures": failures,
    }
