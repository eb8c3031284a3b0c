"""The control room's template tags: the admin dashboard, as an inclusion tag the overridden admin
index calls (templates/admin/index.html), and the filters that show a time (deployments.clock).

A tag rather than a custom AdminSite: the project keeps Django's default admin site and its URLs,
and the index only gains a block. Its data comes from ``deployments.admin.dashboard``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django import template
from django.utils.safestring import SafeString

from deployments.admin.dashboard import dashboard_context
from deployments.admin.display import revision_code, time_ago
from deployments.clock import format_time

register = template.Library()


@register.inclusion_tag("admin/deployments/dashboard.html")
def control_room_dashboard() -> dict[str, Any]:
    return dashboard_context()


@register.filter
def revision(value: str | None, empty: str = "—") -> SafeString:
    """``{{ model.live_revision|revision }}``: a revision as the admin's lists and pages show it."""
    return revision_code(value, empty)


@register.filter
def clock(moment: datetime | None) -> str:
    """``{{ task.created_at|clock }}`` -> ``2026-11-29 11:46:23 UTC``."""
    return format_time(moment)


@register.filter
def ago(moment: datetime | None) -> SafeString:
    """``{{ task.created_at|ago }}`` -> ``3 min ago``, the absolute time as its tooltip."""
    return time_ago(moment)
