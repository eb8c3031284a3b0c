import hmac

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from deployments.metrics import render_metrics
from deployments.services.health import readiness


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness of the web process: constant JSON, no database (also the benchmark's baseline)."""
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness of the whole control plane, for probes (no login): 200 with every check (status ``ok``,
    or ``degraded`` naming the parts working with less, such as a replica down), or 503 naming the
    failing parts (database, broker, workers, pending, inference)."""
    report = readiness()
    return JsonResponse(report.as_json(), status=200 if report.ok else 503)


def favicon(request: HttpRequest) -> HttpResponse:
    """Every browser asks for /favicon.ico: nothing to show, said once a day, rather than a 404 on every page."""
    response = HttpResponse(status=204)
    response["Cache-Control"] = "public, max-age=86400"
    return response


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics (text format). Open unless METRICS_TOKEN is set, then a Bearer token is required."""
    if settings.METRICS_TOKEN:
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(sent.encode(), settings.METRICS_TOKEN.encode()):
            response = JsonResponse({"detail": "a valid metrics token is required"}, status=401)
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    body, content_type = render_metrics()
    return HttpResponse(body, content_type=content_type)


urlpatterns = [
    path("", RedirectView.as_view(url="/api/docs/", permanent=False)),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics, name="metrics"),
    path("favicon.ico", favicon, name="favicon"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api-auth/", include("rest_framework.urls")),  # log in / out for the browsable API
    path("", include("deployments.api.urls")),
]

handler400 = "controlplane.errors.bad_request"
handler404 = "controlplane.errors.not_found"
handler500 = "controlplane.errors.server_error"
