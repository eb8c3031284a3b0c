"""The config form of the confirmation pages (deploy, retry): one input per config key a task accepts.

The inputs are drawn from ``task_config``'s serializers and the values are checked by
``validate_config``, so the admin offers and enforces exactly what the API and the commands do;
the form itself only turns text boxes into JSON values.
"""

from __future__ import annotations

from typing import Any

from django import forms
from rest_framework import serializers

from deployments.task_config import CONFIG_SERIALIZERS, InvalidTaskConfig, validate_config


def _form_field(field: serializers.Field) -> forms.Field:
    # Bounds and patterns are left to validate_config: one set of rules, reported per key.
    options = {"required": False, "help_text": field.help_text or ""}
    if isinstance(field, serializers.IntegerField):
        return forms.IntegerField(**options)
    if isinstance(field, serializers.FloatField):
        return forms.FloatField(**options)
    return forms.CharField(strip=True, **options)


class TaskConfigForm(forms.Form):
    """A task's config keys for ``kind``; an empty box leaves the key out (the server's default)."""

    def __init__(self, kind: str, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.kind = kind
        self.config: dict[str, Any] = {}
        for name, field in CONFIG_SERIALIZERS[kind]().fields.items():
            self.fields[name] = _form_field(field)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        given = {key: value for key, value in cleaned.items() if value not in (None, "")}
        try:
            self.config = validate_config(self.kind, given)
        except InvalidTaskConfig as exc:
            for key, problems in exc.problems.items():
                self.add_error(key if key in self.fields else None, " ".join(problems))
        return cleaned
