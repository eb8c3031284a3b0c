from rest_framework.pagination import CursorPagination


class TaskCursorPagination(CursorPagination):
    """Cursor pages: no COUNT(*) and no OFFSET scans, so listing stays fast over millions of tasks."""

    ordering = ("-created_at", "-sequence")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class ModelCursorPagination(CursorPagination):
    ordering = "id"
    page_size = 100


class AuditCursorPagination(CursorPagination):
    ordering = ("-at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
