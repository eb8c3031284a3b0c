"""JSON bodies for errors Django answers itself (unknown URL, bad request, crash), outside the admin."""

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults


def _is_admin(request: HttpRequest) -> bool:
    return request.path.startswith("/admin/")


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_admin(request):
        return defaults.bad_request(request, exception)
    return JsonResponse({"detail": f"bad request: {exception}" if str(exception) else "bad request"}, status=400)


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_admin(request):
        return defaults.page_not_found(request, exception)
    return JsonResponse({"detail": f"no such path: {request.path}"}, status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    if _is_admin(request):
        return defaults.server_error(request)
    return JsonResponse({"detail": "internal error; the request was not carried out"}, status=500)
