"""The models list, the dashboard and GET /models cost a fixed number of queries, however many models,
tasks and drifts there are: each row's latest tasks and drift come with the page's rows."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from deployments.models import Drift, EmbeddingModel
from tests.support.factories import (
    DeletionTaskFactory,
    EmbeddingModelFactory,
    FailedDeploymentFactory,
    FinishedDeploymentFactory,
)

pytestmark = pytest.mark.django_db

PAGES = ("/admin/deployments/embeddingmodel/", "/admin/")


def add_models(first: int, count: int) -> None:
    """Deployed models, each with a finished deploy, a failed one, a deletion and an open drift."""
    for n in range(first, first + count):
        model = EmbeddingModelFactory(
            id=f"counted-{n:03d}", state=EmbeddingModel.State.DEPLOYED, live_revision=f"{n:04x}cafe", dimensions=32
        )
        FinishedDeploymentFactory(embedding_model_id=model.id)
        FailedDeploymentFactory(embedding_model_id=model.id)
        DeletionTaskFactory(embedding_model_id=model.id)
        Drift.objects.create(embedding_model=model, registered_revision=model.live_revision, detail="not ready")


def queries(client, path: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path)
    assert response.status_code == 200, path
    return len(captured)


def test_the_models_list_and_the_dashboard_cost_the_same_queries_at_3_models_as_at_60(admin_client, api):
    add_models(0, 3)
    for path in PAGES:
        admin_client.get(path)  # a first request fills caches (content types, permissions)
    api.get("/models")
    few = {path: queries(admin_client, path) for path in PAGES} | {"/models": queries(api, "/models")}

    add_models(3, 57)
    many = {path: queries(admin_client, path) for path in PAGES} | {"/models": queries(api, "/models")}

    assert many == few
    page = admin_client.get("/admin/").content.decode()
    # The dashboard names how many are deployed and lists the latest changed, linking to them all.
    assert "Models deployed: 60" in page and "all 60" in page and "?state__exact=deployed" in page
    deployed_module = page.partition("Models deployed:")[2].partition("Last 24 hours")[0]
    assert deployed_module.count("/admin/deployments/embeddingmodel/counted-") == 20
