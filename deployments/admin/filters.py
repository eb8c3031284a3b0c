"""List filters and the paginator that keep the task history fast with a million rows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.functional import cached_property

from deployments import selectors
from deployments.admin.display import task_list_url
from deployments.models import Task, TaskKind


class CappedCountPaginator(Paginator):
    """Counts at most ``cap`` + 1 rows (``SELECT COUNT(*) FROM (... LIMIT cap + 1)``), never the whole table.

    With a million tasks a full COUNT(*) costs more than the page itself; beyond the cap the
    changelist says "more than 10,000" and offers the first cap / per_page pages (filter to go deeper).
    """

    cap = 10_000

    @cached_property
    def count(self) -> int:
        # Unordered and only created_at, which every history index holds: an index-only walk, no sort.
        return self.object_list.order_by().values("created_at")[: self.cap + 1].count()

    @property
    def capped(self) -> bool:
        return self.count > self.cap


class KindFilter(admin.ListFilter):
    """Switches between the deployment and the deletion history, keeping the other filters."""

    title = "kind"
    template = "admin/filter.html"

    def __init__(self, request: HttpRequest, params: dict[str, Any], model: type[Task], model_admin: Any):
        super().__init__(request, params, model, model_admin)
        self.model = model
        kept = request.GET.copy()
        kept.pop("p", None)  # the page number belongs to the list we leave
        self.kept_query = kept.urlencode()

    def has_output(self) -> bool:
        return True

    def expected_parameters(self) -> list[str]:
        return []

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset  # the list's own model (a proxy) already narrows it to one kind

    def choices(self, changelist: Any) -> Iterator[dict[str, Any]]:
        for kind, label in TaskKind.choices:
            url = task_list_url(kind)
            yield {
                "selected": kind == self.model.KIND,
                "query_string": f"{url}?{self.kept_query}" if self.kept_query else url,
                "display": label,
            }


class ModelFilter(admin.SimpleListFilter):
    """The registered models (a small table), not DISTINCT over a million task rows.

    Listed while there are few; past ``max_listed`` the sidebar would be a wall of links, so the
    list is hidden and the search box (exact model id) does the job. ``?model=`` works either way.
    """

    title = "model"
    parameter_name = "model"
    max_listed = 40

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        model_ids = selectors.embedding_model_ids(limit=self.max_listed + 1)
        return [] if len(model_ids) > self.max_listed else [(model_id, model_id) for model_id in model_ids]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(embedding_model_id=self.value()) if self.value() else queryset


class CreatedFilter(admin.SimpleListFilter):
    """Cheap date ranges on the created_at index (date_hierarchy would scan for distinct dates)."""

    title = "created"
    parameter_name = "created"
    RANGES = {
        "1h": ("Last hour", timedelta(hours=1)),
        "24h": ("Last 24 hours", timedelta(hours=24)),
        "7d": ("Last 7 days", timedelta(days=7)),
        "30d": ("Last 30 days", timedelta(days=30)),
    }

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(key, label) for key, (label, _) in self.RANGES.items()] + [("older", "Older than 30 days")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value in self.RANGES:
            return queryset.filter(created_at__gte=timezone.now() - self.RANGES[value][1])
        if value == "older":
            return queryset.filter(created_at__lt=timezone.now() - timedelta(days=30))
        return queryset
