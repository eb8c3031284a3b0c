"""The confirmation page of an action on one task or one model, and the action links of its page.

Nothing happens on GET: the page says what will happen, to what, and posts back with ``post=yes``
(as the list's actions do, see ``confirm_tasks.html``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.template.response import TemplateResponse

from deployments.admin.forms import TaskConfigForm

CONFIRM_TEMPLATE = "admin/deployments/confirm_action.html"


@dataclass(frozen=True)
class ObjectAction:
    """A button on an object's page: what it says, where it goes, and a tooltip saying what it does."""

    label: str
    url: str
    help: str = ""


def confirmed(request: HttpRequest) -> bool:
    return request.method == "POST" and request.POST.get("post") == "yes"


def confirmation_page(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    *,
    verb: str,
    object_label: str,
    object_url: str,
    explanation: str,
    facts: list[tuple[str, Any]],
    submit_label: str,
    form: TaskConfigForm | None = None,
    form_title: str = "",
) -> TemplateResponse:
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"{verb.capitalize()} {object_label}?",
        "opts": model_admin.opts,
        "verb": verb,
        "object_label": object_label,
        "object_url": object_url,
        "explanation": explanation,
        "facts": facts,
        "form": form,
        "form_title": form_title,
        "submit_label": submit_label,
    }
    return TemplateResponse(request, CONFIRM_TEMPLATE, context)
