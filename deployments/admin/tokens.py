"""API tokens (django-rest-knox), one row per token: who it belongs to, when it expires. Deleting a row
revokes that token at once; the key itself is never stored, only its digest and its first characters."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from knox.admin import AuthTokenAdmin as KnoxAuthTokenAdmin
from knox.models import AuthToken

from deployments.api.authentication import is_expired

SHOWN_KEY_CHARACTERS = 8  # enough to tell a holder's token apart, far from enough to use it


class ExpiredFilter(admin.SimpleListFilter):
    title = "expired"
    parameter_name = "expired"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        expired = Q(expiry__lte=timezone.now())
        if self.value() == "yes":
            return queryset.filter(expired)
        if self.value() == "no":
            return queryset.exclude(expired)
        return queryset


# knox registers its own admin (digests only); this one shows the key's start, the expiry and
# whether it has passed, and lets the expiry be changed but nothing else.
admin.site.unregister(AuthToken)


@admin.register(AuthToken)
class AuthTokenAdmin(KnoxAuthTokenAdmin):
    list_display = ("key_start", "user", "created", "expiry", "expired")
    list_filter = (ExpiredFilter,)
    list_select_related = ("user",)
    search_fields = ("user__username",)
    ordering = ("-created",)

    @admin.display(description="key")
    def key_start(self, token: AuthToken) -> str:
        return f"{token.token_key[:SHOWN_KEY_CHARACTERS]}…"

    @admin.display(boolean=True)
    def expired(self, token: AuthToken) -> bool:
        return is_expired(token)

    def get_fields(self, request: HttpRequest, obj: AuthToken | None = None) -> tuple[str, ...]:
        return ("user", "expiry") if obj is None else ("key_start", "user", "created", "expiry")

    def get_readonly_fields(self, request: HttpRequest, obj: AuthToken | None = None) -> tuple[str, ...]:
        return () if obj is None else ("key_start", "user", "created")
