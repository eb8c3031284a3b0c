"""Routes: exactly the spec's six paths (no trailing slash), and the extras beside them."""

from django.urls import path

from deployments.api import views

deployments = views.DeploymentTaskViewSet
deletions = views.DeletionTaskViewSet
models = views.EmbeddingModelViewSet

# A task's timeline is a few events per stage: answered whole, as one JSON list (and so documented).
WHOLE = {"pagination_class": None}

# <str:...> never matches '/', so an id cannot smuggle a path separator into a lookup.
urlpatterns = [
    # The spec
    path("deploy", deployments.as_view({"post": "create", "get": "list"}), name="deploy"),
    path("deploy/<str:task_id>", deployments.as_view({"get": "retrieve"}), name="deploy-task"),
    path("deploy-status/<str:embedding_model_id>", deployments.as_view({"get": "latest"}), name="deploy-status"),
    path("delete", deletions.as_view({"post": "create", "get": "list"}), name="delete"),
    path("delete/<str:task_id>", deletions.as_view({"get": "retrieve"}), name="delete-task"),
    path("delete-status/<str:embedding_model_id>", deletions.as_view({"get": "latest"}), name="delete-status"),
    # Beyond the spec
    path("deploy/<str:task_id>/cancel", deployments.as_view({"post": "cancel"}), name="deploy-cancel"),
    path("deploy/<str:task_id>/retry", deployments.as_view({"post": "retry"}), name="deploy-retry"),
    path("deploy/<str:task_id>/events", deployments.as_view({"get": "events"}, **WHOLE), name="deploy-events"),
    path("delete/<str:task_id>/cancel", deletions.as_view({"post": "cancel"}), name="delete-cancel"),
    path("delete/<str:task_id>/retry", deletions.as_view({"post": "retry"}), name="delete-retry"),
    path("delete/<str:task_id>/events", deletions.as_view({"get": "events"}, **WHOLE), name="delete-events"),
    path("models", models.as_view({"get": "list", "post": "create"}), name="model-list"),
    path("servers", views.InferenceServerViewSet.as_view({"get": "list"}), name="server-list"),
    path("audit", views.AuditEntryViewSet.as_view({"get": "list"}), name="audit-list"),
    path(
        "models/<str:embedding_model_id>",
        models.as_view({"get": "retrieve", "put": "update", "patch": "partial_update", "delete": "destroy"}),
        name="model-detail",
    ),
]
