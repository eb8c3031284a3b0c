"""The admin dashboard, as an inclusion tag the overridden admin index calls (templates/admin/index.html).

A tag rather than a custom AdminSite: the project keeps Django's default admin site and its URLs,
and the index only gains a block. Its data comes from ``deployments.admin.dashboard``.
"""

from __future__ import annotations

from typing import Any

from django import template

from deployments.admin.dashboard import dashboard_context

register = template.Library()


@register.inclusion_tag("admin/deployments/dashboard.html")
def control_room_dashboard() -> dict[str, Any]:
    return dashboard_context()
