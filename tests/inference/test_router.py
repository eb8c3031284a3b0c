"""Envoy in front of real MLServer replicas: route flips, 404s for unrouted models, a replica killed under traffic."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from deployments.inference import InferenceError, V2Client
from deployments.inference.ids import CALLED_NAME_HEADER
from deployments.inference.router import (
    FLEET_CLUSTER,
    LocalEnvoy,
    ModelRoute,
    RouteTable,
    readiness_filter,
    route_config,
    routes_version,
)
from deployments.inference.server import LocalMLServer
from tests.support.routing import INFER_BODY, Traffic, publish_one, write_versioned_settings

MODEL = "routed"


def replica_address(server: LocalMLServer) -> str:
    return f"127.0.0.1:{server.http_port}"


def test_route_config_rewrites_both_paths_and_ends_in_a_404():
    route = ModelRoute("m", "m~abc")
    config = route_config([route], routes_version([route]))["resources"][0]
    routes = config["virtual_hosts"][0]["routes"]
    model_routes = [r for r in routes if r["name"].startswith("m~abc:")]
    assert [(r["match"], r["route"]["prefix_rewrite"]) for r in model_routes] == [
        ({"path": "/v2/models/m"}, "/v2/models/m~abc"),
        ({"path": "/v2/models/m/versions/abc"}, "/v2/models/m~abc"),
        ({"prefix": "/v2/models/m/versions/abc/"}, "/v2/models/m~abc/"),
        ({"prefix": "/v2/models/m/"}, "/v2/models/m~abc/"),
    ]
    called = {"key": CALLED_NAME_HEADER, "value": "m"}
    assert all(r["request_headers_to_add"][0]["header"] == called for r in model_routes)
    policy = model_routes[0]["route"]["retry_policy"]
    assert policy["num_retries"] >= 2 and policy["retriable_status_codes"] == [404]  # another replica may have it
    assert routes[-1]["direct_response"]["status"] == 404


def test_the_server_endpoints_come_before_the_models_and_binary_tensors_are_refused():
    route = ModelRoute("m", "m~abc")
    routes = route_config([route], routes_version([route]))["resources"][0]["virtual_hosts"][0]["routes"]
    assert [r["name"] for r in routes[:3]] == ["binary-tensor-data", "server:live", "server:metadata"]
    assert routes[0]["direct_response"]["status"] == 400
    assert {r["route"]["cluster"] for r in routes[1:3]} == {FLEET_CLUSTER}


def test_readiness_asks_after_the_fleet_and_every_routed_revision():
    minimums = readiness_filter([ModelRoute("m", "m~abc"), ModelRoute("n", "n~def")])["cluster_min_healthy_percentages"]
    assert set(minimums) == {FLEET_CLUSTER, "m~abc", "n~def"}
    assert all(minimum["value"] >= 1 for minimum in minimums.values()), "Envoy truncates a percentage below 1 to 0"


def test_route_versions_name_what_is_served():
    first = ModelRoute("m", "m~r1")
    second = ModelRoute("m", "m~r2")
    assert routes_version([first]) == routes_version([first])
    assert routes_version([first]) != routes_version([second])


@pytest.mark.parametrize("served_name", ["other~r1", "m~", "m", "m~a/b"])
def test_a_route_to_another_model_or_no_revision_is_refused(served_name):
    with pytest.raises(InferenceError):
        ModelRoute("m", served_name)


def test_a_table_whose_route_has_no_cluster_or_a_bad_replica_is_refused(tmp_path):
    table = RouteTable(tmp_path)
    with pytest.raises(InferenceError, match="no cluster"):
        table.publish([ModelRoute("m", "m~r1")], {})
    with pytest.raises(InferenceError, match="host:port"):
        table.publish([ModelRoute("m", "m~r1")], {"m~r1": ["no-port"]})
    assert not table.routes_path.exists(), "nothing is written for a refused table"


@pytest.fixture(scope="module")
def envoy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvoy]:
    with LocalEnvoy(tmp_path_factory.mktemp("envoy")) as router:
        yield router


@pytest.fixture(scope="module")
def two_revisions(mlserver: LocalMLServer, minilm_dir: Path) -> Iterator[tuple[str, str]]:
    """``routed~r1`` and ``routed~r2`` loaded on the session's MLServer (the same weights, two revisions)."""
    names = tuple(write_versioned_settings(mlserver.repository_root, MODEL, rev, minilm_dir) for rev in ("r1", "r2"))
    with V2Client(mlserver.url) as client:
        for name in names:
            client.load(name, timeout=120)
        yield names
        for name in names:
            client.unload(name)
    shutil.rmtree(mlserver.repository_root / MODEL)


def infer_revision(url: str, model_id: str = MODEL) -> str:
    response = httpx.post(f"{url}/v2/models/{model_id}/infer", json=INFER_BODY, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["parameters"]["revision"]


@pytest.mark.mlserver
def test_an_unrouted_model_is_a_404_json_from_envoy(envoy):
    response = httpx.post(f"{envoy.url}/v2/models/no-such-model/infer", json=INFER_BODY)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["model"] == "no-such-model"
    assert response.json()["path"] == "/v2/models/no-such-model/infer"
    metadata = httpx.get(f"{envoy.url}/v2/models/no-such-model", params={"q": "1"})
    assert metadata.status_code == 404 and metadata.json()["model"] == "no-such-model"


@pytest.mark.mlserver
def test_envoy_serves_the_published_revision_and_a_flip_switches_it(envoy, mlserver, two_revisions):
    r1, r2 = two_revisions
    replicas = (replica_address(mlserver),)
    version = publish_one(envoy.routes, MODEL, r1, replicas, also=[r2])
    assert envoy.served_routes().version == version
    assert envoy.served_routes().served_names == {MODEL: r1}
    assert infer_revision(envoy.url) == "r1"

    metadata = httpx.get(f"{envoy.url}/v2/models/{MODEL}").json()
    assert metadata["name"] == MODEL, "the name the client called, not the revision that answered"
    assert metadata["versions"] == ["r1"] and metadata["parameters"]["revision"] == "r1"
    assert httpx.get(f"{envoy.url}/v2/models/{MODEL}/ready").status_code == 200

    started = time.monotonic()
    publish_one(envoy.routes, MODEL, r2, replicas, also=[r1])
    while infer_revision(envoy.url) != "r2":
        assert time.monotonic() - started < 2.0, "Envoy still routes to r1 two seconds after the flip"
    assert envoy.served_routes().served_names == {MODEL: r2}
    assert httpx.get(f"{envoy.url}/v2/models/{MODEL}").json()["parameters"]["revision"] == "r2"
    # Per-revision counters: the bake window's signal.
    stats = httpx.get(f"{envoy.admin_url}/stats", params={"filter": r"vhost\.models\.route\..*upstream_rq_completed$"})
    completed = dict(line.rsplit(": ", 1) for line in stats.text.splitlines())
    assert int(completed[f"vhost.models.route.{r1}.calls.upstream_rq_completed"]) >= 1
    assert int(completed[f"vhost.models.route.{r2}.calls.upstream_rq_completed"]) >= 1


def sent_as_is(url: str, method: str, path: str) -> tuple[int, bytes]:
    """A request whose path no client library tidies up first (as curl --path-as-is sends it)."""
    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    try:
        connection.request(method, path, body=b"{}", headers={"content-type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.mlserver
def test_a_path_that_climbs_out_of_a_model_s_route_never_reaches_a_replica(envoy, mlserver, two_revisions):
    """Envoy resolves dot segments before matching: a replica is asked only for a routed model's own paths,
    never its repository API (load, unload) or a revision not routed, whatever the path climbs through."""
    r1, r2 = two_revisions
    publish_one(envoy.routes, MODEL, r1, (replica_address(mlserver),), also=[r2])
    for path in (
        f"/v2/models/{MODEL}/../../repository/index",
        f"/v2/models/{MODEL}/%2e%2e/%2e%2e/repository/models/{r1}/unload",
        f"/v2/models/{MODEL}/../{r2}/ready",
    ):
        status, body = sent_as_is(envoy.url, "POST", path)
        assert (status, json.loads(body)["error"]) == (404, "no model is routed at this path"), path
    assert sent_as_is(envoy.url, "POST", f"/v2/models/{MODEL}/..%2f..%2frepository/index")[0] == 400
    assert sent_as_is(envoy.url, "GET", f"/v2/models/other/../{MODEL}/ready")[0] == 200  # resolved, then routed
    assert httpx.get(f"{mlserver.url}/v2/models/{r1}/ready").status_code == 200  # nothing was unloaded


@pytest.mark.mlserver
def test_route_flips_under_traffic_fail_no_request(envoy, mlserver, two_revisions):
    replicas = (replica_address(mlserver),)
    publish_one(envoy.routes, MODEL, two_revisions[0], replicas, also=two_revisions)
    flips: list[tuple[float, float, str]] = []  # (publish called, publish returned, revision)
    with Traffic(envoy.url, MODEL) as traffic:
        time.sleep(0.3)
        for flip in range(10):
            served_name = two_revisions[(flip + 1) % 2]
            called = time.monotonic()
            publish_one(envoy.routes, MODEL, served_name, replicas, also=two_revisions)  # returns once served
            flips.append((called, time.monotonic(), served_name.rsplit("~", 1)[1]))
            time.sleep(1.0)
    assert traffic.failures == []
    assert len(traffic.answers) > 50
    # Each flip took: every request sent from half a second after publish returned until the next flip met the
    # new revision. (Envoy's admin shows the new routes a moment before its worker threads all have them; how
    # short that moment is, the switch time, is measured by bench/bench_fleet.py, not timed here, where a
    # busy machine stretches it.)
    next_calls = [called for called, _, _ in flips[1:]] + [float("inf")]
    for (_, returned, revision), next_call in zip(flips, next_calls, strict=True):
        answered_by = {rev for sent, _, rev in traffic.answers if returned + 0.5 < sent < next_call}
        assert answered_by == {revision}


@pytest.fixture
def second_replica(mlserver: LocalMLServer, tmp_path: Path) -> Iterator[LocalMLServer]:
    """A second MLServer on the same repository root (one process, light)."""
    replica = LocalMLServer(mlserver.repository_root, tmp_path / "replica", extra_env=mlserver.extra_env)
    replica.start()
    try:
        yield replica
    finally:
        replica.stop()


def host_successes(envoy: LocalEnvoy, cluster: str) -> dict[str, int]:
    """Requests each replica of ``cluster`` answered, from Envoy's admin."""
    status = httpx.get(f"{envoy.admin_url}/clusters", params={"format": "json"}).json()
    successes = {}
    for entry in status["cluster_statuses"]:
        if entry["name"] == cluster:
            for host in entry["host_statuses"]:
                stats = {stat["name"]: int(stat.get("value", 0)) for stat in host["stats"]}
                successes[str(host["address"]["socket_address"]["port_value"])] = stats.get("rq_success", 0)
    return successes


@pytest.mark.mlserver
@pytest.mark.drill
def test_a_replica_sigkilled_under_traffic_fails_no_request_through_envoy(
    envoy, mlserver, second_replica, two_revisions
):
    served_name = two_revisions[0]
    with V2Client(second_replica.url) as client:
        client.load(served_name, timeout=120)
    replicas = (replica_address(mlserver), replica_address(second_replica))
    publish_one(envoy.routes, MODEL, served_name, replicas)

    with Traffic(envoy.url, MODEL) as traffic:
        time.sleep(1.0)
        answered_before_kill = len(traffic.answers)
        assert all(successes > 0 for successes in host_successes(envoy, served_name).values())
        assert second_replica.process is not None
        os.killpg(second_replica.process.pid, signal.SIGKILL)
        time.sleep(2.0)
    assert answered_before_kill > 10
    assert traffic.failures == []
    assert len(traffic.answers) > answered_before_kill + 10


@pytest.mark.mlserver
def test_a_new_route_table_takes_over_a_running_envoy(envoy, mlserver, two_revisions):
    """A deployer that restarted knows nothing of what it wrote before: publishing still converges."""
    replicas = (replica_address(mlserver),)
    publish_one(envoy.routes, MODEL, two_revisions[0], replicas, also=two_revisions)
    restarted = RouteTable(envoy.routes.config_dir, admin_url=envoy.admin_url)
    publish_one(restarted, MODEL, two_revisions[1], replicas)
    assert envoy.served_routes().served_names == {MODEL: two_revisions[1]}
    assert infer_revision(envoy.url) == "r2"


def rds_rejections(envoy: LocalEnvoy) -> int:
    """Route files Envoy read and refused (malformed or invalid), from its admin stats."""
    stats = httpx.get(f"{envoy.admin_url}/stats", params={"filter": r"rds\.models\.update_(rejected|failure)$"})
    return sum(int(line.rsplit(":", 1)[1]) for line in stats.text.splitlines() if ":" in line)


@pytest.mark.mlserver
def test_a_route_file_envoy_rejects_leaves_the_last_good_routes_serving(envoy, mlserver, two_revisions):
    replicas = (replica_address(mlserver),)
    version = publish_one(envoy.routes, MODEL, two_revisions[0], replicas, also=two_revisions)
    rejected_before = rds_rejections(envoy)
    broken = envoy.routes.routes_dir / ".broken.json"
    broken.write_text('{"version_info": "broken", "resources": [{"@type": "not-a-type"}]}')
    broken.rename(envoy.routes.routes_path)
    deadline = time.monotonic() + 5
    while rds_rejections(envoy) == rejected_before:
        assert time.monotonic() < deadline, "Envoy did not read the broken file"
        time.sleep(0.05)
    assert envoy.served_routes().version == version
    assert infer_revision(envoy.url) == "r1"
