"""The admin dashboard, as an inclusion tag the overridden admin index calls (templates/admin/index.html).

A tag rather than a custom AdminSite: the project keeps Django's default admin site and its URLs,
and the index only gains a block. Its data comes from ``deployments.admin.dashboard``.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.utils.safestring import SafeString

from deployments.admin.dashboard import dashboard_context
from deployments.admin.display import revision_code

register = template.Library()


@register.inclusion_tag("admin/deployments/dashboard.html")
def control_room_dashboard() -> dict[str, Any]:
    return dashboard_context()


@register.filter
def revision(value: str | None, empty: str = "—") -> SafeString:
    """``{{ model.live_revision|revision }}``: a revision as the admin's lists and pages show it."""
    return revision_code(value, empty)
