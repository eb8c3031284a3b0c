"""What a status lookup costs in queries: the token, then the task. One table did not add a query."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.support.factories import DeletionTaskFactory, DeploymentTaskFactory, EmbeddingModelFactory

pytestmark = pytest.mark.django_db

# One query authenticates the token (with its user), one reads the task.
STATUS_LOOKUP_QUERIES = 2


@pytest.fixture
def history():
    model = EmbeddingModelFactory(id="counted")
    deployment = DeploymentTaskFactory.create_batch(3, embedding_model_id=model.id)[-1]
    deletion = DeletionTaskFactory(embedding_model_id=model.id)
    return deployment, deletion


def test_each_status_lookup_costs_the_token_and_one_task_query(api, history, django_assert_num_queries):
    deployment, deletion = history
    paths = [
        f"/deploy/{deployment.pk}",
        f"/delete/{deletion.pk}",
        "/deploy-status/counted",
        "/delete-status/counted",
    ]
    for path in paths:
        with django_assert_num_queries(STATUS_LOOKUP_QUERIES):
            assert api.get(path).status_code == 200, path


def test_a_task_of_the_other_kind_is_not_found_for_the_same_cost(api, history, django_assert_num_queries):
    deployment, deletion = history
    with django_assert_num_queries(STATUS_LOOKUP_QUERIES):
        assert api.get(f"/delete/{deployment.pk}").status_code == 404
    with django_assert_num_queries(STATUS_LOOKUP_QUERIES):
        assert api.get(f"/deploy/{deletion.pk}").status_code == 404


def test_a_page_of_pending_tasks_costs_the_same_whatever_its_length(api):
    """Why each pending task waits is read with the page's rows, never a query per row."""

    def queries_for_page() -> int:
        with CaptureQueriesContext(connection) as queries:
            results = api.get("/deploy?page_size=100").json()["results"]
        assert all(result["detail"] for result in results if result["status"] == "pending")
        return len(queries)

    model = EmbeddingModelFactory(id="queue")
    DeploymentTaskFactory.create_batch(2, embedding_model_id=model.id)
    few = queries_for_page()
    DeploymentTaskFactory.create_batch(20, embedding_model_id=model.id)
    for _ in range(5):
        DeploymentTaskFactory()
    assert queries_for_page() == few
