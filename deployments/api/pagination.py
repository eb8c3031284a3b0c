import re
from typing import Any

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request

WHOLE_NUMBER = re.compile(r"[0-9]+")


class SizedCursorPagination(CursorPagination):
    """Cursor pages: no COUNT(*) and no OFFSET scans, so listing stays fast over millions of rows; the
    caller may ask for a page_size within bounds."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def get_page_size(self, request: Request) -> int:
        """page_size from 1 to max_page_size; anything else is a 400 naming it, where DRF would quietly use
        the default (so a typo would go unnoticed)."""
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not WHOLE_NUMBER.fullmatch(raw) or not 1 <= int(raw) <= self.max_page_size:
            raise ValidationError(
                {self.page_size_query_param: [f"must be a whole number from 1 to {self.max_page_size}."]}
            )
        return int(raw)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"].update(minimum=1, maximum=self.max_page_size)
        return parameters


class ModelCursorPagination(CursorPagination):
    ordering = "id"
    page_size = 100


class TaskCursorPagination(SizedCursorPagination):
    ordering = ("-created_at", "-sequence")


class AuditCursorPagination(SizedCursorPagination):
    ordering = ("-at", "-id")
