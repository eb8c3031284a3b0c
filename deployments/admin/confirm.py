"""The confirmation page of an action on one task or one model, and the action links of its page.

Nothing happens on GET: the page says what will happen, to what, and posts back with ``post=yes``
(as the list's actions do, see ``confirm_tasks.html``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import quote, unquote
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse

from deployments.admin.forms import TaskConfigForm

CONFIRM_TEMPLATE = "admin/deployments/confirm_action.html"


@dataclass(frozen=True)
class ObjectAction:
    """A button on an object's page: what it says, where it goes, and a tooltip saying what it does."""

    label: str
    url: str
    help: str = ""


class ObjectActionsMixin:
    """A ModelAdmin whose change page shows ``object_actions(request, obj)`` as buttons, each a view of its
    own registered under ``admin:<app>_<model>_<action>``."""

    def object_actions(self, request: HttpRequest, obj: Any) -> list[ObjectAction]:
        raise NotImplementedError

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        obj = self.get_object(request, unquote(object_id))
        actions = self.object_actions(request, obj) if obj is not None else []
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), "object_actions": actions})

    def _own_url(self, obj: Any, action: str) -> str:
        return reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_{action}", args=[quote(obj.pk)])


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
