"""A fleet of three real MLServer replicas behind a real Envoy: deploys under traffic, one switch for every
replica, a bake that rolls back, rollback to a kept revision, a replica killed under traffic and restored,
a replica that fails to load green. Slow (three servers): run in the SQLite profile only."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tritonclient.http as tritonclient

from deployments.inference import DeployFailed, Fleet, GreenDeployer, ModelRepository, StageEvent, served_name
from deployments.inference.fleet import replica_address
from deployments.inference.router import LocalEnvoy, active_clusters
from deployments.inference.runtime_markers import INSTANCE_MARKER_DIR_ENV, count_instances
from deployments.inference.server import LocalMLServer
from tests.support.routing import Traffic

pytestmark = [pytest.mark.mlserver, pytest.mark.drill]
REPLICAS = 3


class Replicas:
    """Three MLServers on one shared model repository, each keeping its instance markers apart."""

    def __init__(self, base: Path):
        self.repository_root = base / "repository"
        self.servers = [
            LocalMLServer(
                self.repository_root,
                base / f"replica-{n}",
                extra_env={INSTANCE_MARKER_DIR_ENV: str(base / f"instances-{n}")},
            )
            for n in range(REPLICAS)
        ]

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    def markers(self, n: int) -> Path:
        return Path(self.servers[n].extra_env[INSTANCE_MARKER_DIR_ENV])

    def kill(self, n: int) -> None:
        """SIGKILL the replica's whole process group: no goodbye to anyone."""
        process = self.servers[n].process
        assert process is not None
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        shutil.rmtree(self.markers(n), ignore_errors=True)  # a killed replica's instances are gone

    def start(self, n: int) -> None:
        self.servers[n].start()


class FleetHealth:
    """A client asking the router whether the fleet is live and ready, over and over: what it got wrong."""

    def __init__(self, url: str):
        self.client = tritonclient.InferenceServerClient(url.removeprefix("http://"))
        self.answers = 0
        self.failures: list[str] = []
        self.longest_unready = 0  # answers in a row that said not ready
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._ask, daemon=True)

    def _ask(self) -> None:
        unready = 0
        while not self._stop.is_set():
            if not self.client.is_server_live():
                self.failures.append("is_server_live")
            unready = 0 if self.client.is_server_ready() else unready + 1
            self.longest_unready = max(self.longest_unready, unready)
            self.answers += 1
            time.sleep(0.05)

    def __enter__(self) -> FleetHealth:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.client.close()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    fleet = Replicas(tmp_path_factory.mktemp("fleet"))
    with ThreadPoolExecutor(REPLICAS) as pool:
        list(pool.map(lambda server: server.start(), fleet.servers))
    try:
        yield fleet
    finally:
        for server in fleet.servers:
            server.stop()


@pytest.fixture(scope="module")
def fleet_envoy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvoy]:
    with LocalEnvoy(tmp_path_factory.mktemp("fleet-envoy")) as router:
        yield router


@pytest.fixture
def deployer(replicas, fleet_envoy, minilm_dir, sources_root) -> Iterator[GreenDeployer]:
    for n, server in enumerate(replicas.servers):
        if not server.running:  # a test that killed one and failed before restarting it
            replicas.start(n)
    fleet = Fleet(fleet_envoy.url, replicas.urls, fleet_envoy.routes, timeout=30)
    repository = ModelRepository(replicas.repository_root)
    yield GreenDeployer(fleet, repository, allowed_roots=[minilm_dir.parent, sources_root], ready_timeout=120)
    fleet.close()


def new_source(minilm_dir: Path, sources_root: Path, note: str) -> str:
    """MiniLM plus a note: the same weights, a different revision."""
    target = sources_root / note
    shutil.copytree(minilm_dir, target)
    (target / "NOTE.txt").write_text(note)
    return str(target)


def ready_revisions(deployer: GreenDeployer, model_id: str) -> list[set[str]]:
    """Per replica, the revisions of ``model_id`` it has ready."""
    view = deployer.fleet.view()
    prefix = f"{model_id}~"
    return [
        {name.removeprefix(prefix) for name in names or () if name.startswith(prefix)} for names in view.ready.values()
    ]


def answers_by_replica(deployer: GreenDeployer, model_id: str, revision: str) -> set[str]:
    """The revision each replica answers from when asked directly for ``revision``'s name."""
    name = served_name(model_id, revision)
    return {client.infer(name, ["direct"]).parameters["revision"] for client in deployer.fleet.replicas.values()}


def test_repeated_deploys_under_traffic_fail_no_request_and_switch_every_replica_at_once(
    deployer, replicas, fleet_envoy, minilm_dir, sources_root
):
    model = "fleet-live"
    first = deployer.deploy(model, str(minilm_dir))
    most_loaded = [0] * REPLICAS
    stop = threading.Event()

    def watch() -> None:  # instances of the model per replica, every 5 ms
        while not stop.is_set():
            for n in range(REPLICAS):
                most_loaded[n] = max(most_loaded[n], count_instances(replicas.markers(n), model))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    switches: list[tuple[float, str]] = []  # when the deploy returned, and the revision it made live
    try:
        with Traffic(fleet_envoy.url, model) as traffic:
            for n in range(3):
                result = deployer.deploy(model, new_source(minilm_dir, sources_root, f"live-{n}"))
                switches.append((time.monotonic(), result.revision))
                assert ready_revisions(deployer, model) == [{result.revision}] * REPLICAS
                assert answers_by_replica(deployer, model, result.revision) == {result.revision}
    finally:
        stop.set()
        watcher.join()

    assert traffic.failures == []
    assert traffic.requests > 100
    assert {revision for *_, revision in traffic.answers} >= {first.revision, *(rev for _, rev in switches)}
    # No skew: once a deploy has returned, no request meets an older revision, on any replica.
    for (returned, revision), (next_returned, next_revision) in zip(
        switches, [*switches[1:], (float("inf"), "")], strict=True
    ):
        answered_by = {rev for sent, _, rev in traffic.answers if returned < sent < next_returned}
        assert answered_by <= {revision, next_revision}, (revision, answered_by)
    assert max(most_loaded) == 2, f"instances per replica: {most_loaded} (blue plus green, never three)"


def test_a_bake_failure_rolls_the_route_back_to_blue(deployer, replicas, fleet_envoy, minilm_dir, sources_root):
    model = "fleet-bake"
    blue = deployer.deploy(model, str(minilm_dir))
    green_source = new_source(minilm_dir, sources_root, "bake-green")
    replica = replicas.urls[1]

    def lose_green_on_one_replica(event: StageEvent) -> None:
        if (event.stage, event.state) == ("bake", "started"):
            green = deployer.repository.loadable_revisions(model)
            name = next(served_name(model, rev) for rev in green if rev != blue.revision)
            deployer.fleet.replicas[replica].unload(name)  # the replica lost green mid-bake (a real unload)

    with Traffic(fleet_envoy.url, model) as traffic, pytest.raises(DeployFailed) as failure:
        deployer.deploy(model, green_source, bake_seconds=30, progress=lose_green_on_one_replica)

    assert failure.value.stage == "bake"
    assert failure.value.reason.startswith("rolled back: ") and replica in failure.value.reason
    metadata = failure.value.metadata
    assert metadata["previous_revision"] == blue.revision and metadata["revision"] != blue.revision
    assert metadata["rollback_ms"] > 0
    assert deployer.served_revision(model) == blue.revision
    assert ready_revisions(deployer, model) == [{blue.revision}] * REPLICAS  # green unloaded everywhere
    assert deployer.repository.loadable_revisions(model) == [blue.revision]
    assert traffic.failures == []


def test_a_kept_revision_rolls_back_every_replica(deployer, minilm_dir, sources_root):
    model = "fleet-rollback"
    first = deployer.deploy(model, str(minilm_dir))
    second = deployer.deploy(model, new_source(minilm_dir, sources_root, "rollback-2"))
    back = deployer.deploy(model, "", revision=first.revision)
    assert (back.revision, back.previous_revision) == (first.revision, second.revision)
    assert deployer.served_revision(model) == first.revision
    assert ready_revisions(deployer, model) == [{first.revision}] * REPLICAS
    assert answers_by_replica(deployer, model, first.revision) == {first.revision}


def test_a_replica_killed_under_traffic_fails_no_request_and_rejoins_once_restored(
    deployer, replicas, fleet_envoy, minilm_dir
):
    model = "fleet-kill"
    result = deployer.deploy(model, str(minilm_dir))
    name = served_name(model, result.revision)
    victim = 2
    with Traffic(fleet_envoy.url, model, clients=6) as traffic, FleetHealth(fleet_envoy.url) as health:
        time.sleep(0.5)
        replicas.kill(victim)
        time.sleep(3)  # traffic goes on while the replica is dead
        assert deployer.out_of_step(model) is None, "a dead replica is not one that lacks the revision"
        replicas.start(victim)  # back, empty: the router's health check keeps it out
        assert "not ready on" in deployer.out_of_step(model)
        assert deployer.restore(model) == result.revision  # what the reconciler does
        time.sleep(0.5)
    assert traffic.failures == []
    assert traffic.requests > 50
    assert health.answers > 20 and health.failures == [], "the fleet stayed live: two replicas served"
    # Ready may read false for one answer (50 ms) while the restore's publish replaces the model's cluster.
    assert health.longest_unready <= 1, "the fleet stayed ready: two replicas served"
    assert deployer.out_of_step(model) is None
    assert active_clusters(fleet_envoy.admin_url)[name] == tuple(sorted(replica_address(u) for u in replicas.urls))
    assert answers_by_replica(deployer, model, result.revision) == {result.revision}


def test_a_replica_that_fails_to_load_green_leaves_blue_everywhere(
    deployer, replicas, fleet_envoy, minilm_dir, sources_root
):
    model = "fleet-partial"
    blue = deployer.deploy(model, str(minilm_dir))
    victim = 1

    def kill_one_replica_as_green_loads(event: StageEvent) -> None:
        # As the stage starts, after validate counted the replica in: a load takes 0.1 s on a warm
        # replica, so a kill any later may miss it.
        if (event.stage, event.state) == ("load_green", "started"):
            replicas.kill(victim)

    with Traffic(fleet_envoy.url, model) as traffic, pytest.raises(DeployFailed) as failure:
        deployer.deploy(
            model, new_source(minilm_dir, sources_root, "partial"), progress=kill_one_replica_as_green_loads
        )

    assert failure.value.stage == "load_green" and replicas.urls[victim] in failure.value.reason
    assert deployer.served_revision(model) == blue.revision
    survivors = [names for n, names in enumerate(ready_revisions(deployer, model)) if n != victim]
    assert survivors == [{blue.revision}] * (REPLICAS - 1)  # green unloaded where it had loaded
    assert deployer.repository.loadable_revisions(model) == [blue.revision]
    assert traffic.failures == []

    replicas.start(victim)
    assert deployer.restore(model) == blue.revision
    assert ready_revisions(deployer, model) == [{blue.revision}] * REPLICAS
