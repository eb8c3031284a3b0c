"""The audit trail, read-only: who created, canceled or retried tasks and who changed the registry.

Each task's and each model's page shows its own latest entries (``display.audit_trail``); this list
holds them all, filtered by how (via), what (action, kind) and exact ids.
"""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html_join
from django.utils.safestring import SafeString

from deployments.admin.display import audit_change_lines, audit_object_link
from deployments.admin.history import ReadOnlyAdminMixin
from deployments.models import AuditEntry


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Entries are written by the services as things happen; nobody edits the record of what was done."""

    list_display = ("at", "actor", "via", "action", "object_link", "change_lines", "ip")
    list_filter = ("via", "action", "object_kind")
    search_fields = ("object_id", "embedding_model_id", "actor")  # matched exactly in get_search_results
    search_help_text = "An exact task id, embedding model id or actor."
    ordering = ("-at", "-id")
    list_per_page = 100
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    fields = (
        "at",
        "actor",
        "user",
        "via",
        "action",
        "object_kind",
        "object_id",
        "embedding_model_id",
        "change_lines",
        "request_id",
        "ip",
    )
    readonly_fields = fields

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        # Exact matches: index seeks on the trail's ids, where icontains would scan every entry.
        term = search_term.strip()
        if not term:
            return queryset, False
        by_object = queryset.filter(object_id=term)
        if by_object.exists():
            return by_object, False
        by_model = queryset.filter(embedding_model_id=term)
        if by_model.exists():
            return by_model, False
        return queryset.filter(actor=term), False

    @admin.display(description="to")
    def object_link(self, entry: AuditEntry) -> SafeString:
        return audit_object_link(entry)

    @admin.display(description="what changed")
    def change_lines(self, entry: AuditEntry) -> SafeString:
        return format_html_join("", "<div>{}</div>", ((line,) for line in audit_change_lines(entry)))
