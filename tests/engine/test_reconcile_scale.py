"""A reconcile cycle reads the fleet once, whatever the number of models: one repository index per
replica and one read of the router's routes decide every model; a repair adds its loads and one publish."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from deployments.inference import V2Client, served_name
from deployments.services.reconciler import reconcile_models
from tests.support.scale import counted_http_calls, register_live, remove_models, serve_live_models

pytestmark = [pytest.mark.mlserver, pytest.mark.django_db]

INDEX = ("POST", "/v2/repository/index")
ROUTES = ("GET", "/config_dump")


@pytest.fixture
def http_calls() -> Iterator[list[tuple[str, str]]]:
    with counted_http_calls() as calls:
        yield calls


def one_cycle(http_calls: list[tuple[str, str]]):
    http_calls.clear()
    report = reconcile_models()
    return report, list(http_calls)


def loads(calls: list[tuple[str, str]]) -> int:
    return sum(1 for method, path in calls if method == "POST" and path.endswith("/load"))


def test_a_cycle_reads_the_fleet_once_at_5_models_as_at_20(
    inference_settings, fleet, model_repository, mlserver, tiny_model_dir, http_calls
):
    ids = [f"flat-{n:02d}" for n in range(20)]
    few, rest = ids[:5], ids[5:]
    try:
        revision = serve_live_models(fleet, model_repository, few, tiny_model_dir)
        register_live(few, revision, tiny_model_dir, fleet.base_url)
        report_few, steady_few = one_cycle(http_calls)
        serve_live_models(fleet, model_repository, rest, tiny_model_dir)
        register_live(rest, revision, tiny_model_dir, fleet.base_url)
        report_all, steady_all = one_cycle(http_calls)

        assert report_few.already_served == few and report_all.already_served == ids
        # In step, nothing to repair: one index of the one replica and one read of Envoy's routes, at either size.
        assert sorted(steady_few) == sorted(steady_all) == sorted([INDEX, ROUTES])

        # A restarted replica: nothing loaded. Each model is loaded again; the fleet is still read once
        # to decide, and once more by the one publish that routes them all.
        repairs = {}
        for restored in (few, ids):
            with V2Client(mlserver.url) as client:
                for model_id in restored:
                    client.unload(served_name(model_id, revision))
            report, calls = one_cycle(http_calls)
            assert sorted(report.restored) == restored and not report.failed
            repairs[len(restored)] = calls
        assert [loads(calls) for calls in repairs.values()] == [5, 20]
        assert [calls.count(INDEX) for calls in repairs.values()] == [2, 2]
        with V2Client(mlserver.url) as client:
            answer = client.infer(served_name(ids[-1], revision), ["served again"])
        assert answer.parameters["revision"] == revision
        assert one_cycle(http_calls)[0].already_served == ids
    finally:
        remove_models(fleet, model_repository, ids)
