"""Green deploys and deletes against a real MLServer serving the packaged all-MiniLM-L6-v2."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from deployments.inference import (
    DeployFailed,
    GreenDeployer,
    LoadFailed,
    ModelNotFound,
    StageEvent,
    V2Client,
    open_source,
)
from deployments.inference.green import DEPLOY_STAGES
from deployments.inference.repository import STABLE
from deployments.inference.runtime_markers import count_instances
from deployments.inference.server import free_port

pytestmark = pytest.mark.mlserver


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    """An allowed source root holding copies of MiniLM we can vary per test."""
    root = tmp_path / "sources"
    root.mkdir()
    return root


def copy_model(minilm_dir: Path, sources: Path, name: str, note: str | None = None) -> Path:
    target = sources / name
    shutil.copytree(minilm_dir, target)
    if note is not None:  # a different file set makes a different revision of the same weights
        (target / "RELEASE_NOTES.txt").write_text(note)
    return target


@pytest.fixture
def deployer(v2_client, model_repository, minilm_dir, sources) -> GreenDeployer:
    return GreenDeployer(v2_client, model_repository, allowed_roots=[minilm_dir.parent, sources], ready_timeout=120)


def assert_no_green_left(v2_client: V2Client, deployer: GreenDeployer, model_id: str) -> None:
    names = {entry["name"]: entry["state"] for entry in v2_client.index()}
    greens = {name: state for name, state in names.items() if name.startswith(f"{model_id}~green")}
    assert set(greens.values()) <= {"UNAVAILABLE", "UNLOADED"}, names
    assert not any(v2_client.model_ready(name) for name in greens)
    assert deployer.repository.staging_tags(model_id) == []  # no attempt's staging settings left


def test_minilm_deploys_end_to_end_and_gives_real_embeddings(deployer, v2_client, minilm_dir):
    events: list[StageEvent] = []
    result = deployer.deploy("minilm-e2e", str(minilm_dir), expected_dimensions=384, progress=events.append)

    assert result.dimensions == 384
    assert result.endpoint.endswith("/v2/models/minilm-e2e/infer")
    assert [e.stage for e in events if e.state == "done"] == list(DEPLOY_STAGES)
    assert set(result.timings) == set(DEPLOY_STAGES)

    vectors = v2_client.infer("minilm-e2e", ["cat", "kitten", "stock market"]).embeddings
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4), "MiniLM's config normalises"
    cat, kitten, stocks = vectors
    assert cat @ kitten > cat @ stocks + 0.2
    assert_no_green_left(v2_client, deployer, "minilm-e2e")


def test_redeploying_under_traffic_drops_no_request(
    deployer, v2_client, minilm_dir, sources, mlserver, instance_markers
):
    blue = deployer.deploy("minilm-live", str(minilm_dir))
    green_source = copy_model(minilm_dir, sources, "minilm-v2", note="second revision")

    outcomes: list[str | None] = []
    errors: list[str] = []
    most_instances = 0
    stop = threading.Event()

    def fire() -> None:
        with V2Client(mlserver.url, timeout=30) as client:
            while not stop.is_set():
                try:
                    outcomes.append(client.infer("minilm-live", ["steady traffic"]).parameters.get("revision"))
                except Exception as exc:  # every failure counts, whatever its kind
                    errors.append(repr(exc))

    def watch() -> None:
        nonlocal most_instances
        while not stop.is_set():
            most_instances = max(most_instances, count_instances(instance_markers, "minilm-live"))
            time.sleep(0.005)

    threads = [threading.Thread(target=fire) for _ in range(3)] + [threading.Thread(target=watch)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        green = deployer.deploy("minilm-live", str(green_source))
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    assert green.revision != blue.revision and green.previous_revision == blue.revision
    assert errors == []
    assert len(outcomes) > 20
    assert outcomes[0] == blue.revision and outcomes[-1] == green.revision
    assert set(outcomes) == {blue.revision, green.revision}
    assert most_instances == 2, "blue plus one, never three"
    assert count_instances(instance_markers, "minilm-live") == 1


def _corrupt_weights(path: Path) -> None:
    (path / "model.safetensors").write_bytes(b"\x00" * 1024)


def _break_config(path: Path) -> None:
    (path / "config.json").write_text("{ this is not json")


@pytest.mark.parametrize(
    ("breakage", "expected_dimensions", "stage", "named"),
    [
        # What the reason must name: the runtime's load error (not, say, a timeout), or both dimensions.
        (_corrupt_weights, None, "stage_green", ["sentence-transformers"]),
        (_break_config, None, "stage_green", ["sentence-transformers"]),
        (None, 512, "smoke_test", ["512", "384"]),
    ],
    ids=["corrupt-weights", "load-raises", "wrong-dimensions"],
)
def test_a_failing_green_leaves_blue_serving_and_no_green_behind(
    deployer, v2_client, minilm_dir, sources, breakage, expected_dimensions, stage, named, instance_markers
):
    blue = deployer.deploy("minilm-guarded", str(minilm_dir))
    broken = copy_model(minilm_dir, sources, "broken", note="broken")
    if breakage:
        breakage(broken)

    events: list[StageEvent] = []
    with pytest.raises(DeployFailed) as failure:
        deployer.deploy("minilm-guarded", str(broken), expected_dimensions=expected_dimensions, progress=events.append)

    assert failure.value.stage == stage and not failure.value.refused
    assert all(part in failure.value.reason for part in named), failure.value.reason
    assert events[-1] == StageEvent(stage, "failed", failure.value.reason, events[-1].duration_s)
    assert deployer.live_revision("minilm-guarded") == blue.revision
    answer = v2_client.infer("minilm-guarded", ["still here"])
    assert answer.parameters["revision"] == blue.revision
    assert answer.embeddings.shape == (1, 384)
    assert_no_green_left(v2_client, deployer, "minilm-guarded")
    assert count_instances(instance_markers, "minilm-guarded") == 1


def test_a_crash_mid_deploy_converges_when_run_again(deployer, v2_client, minilm_dir, sources, instance_markers):
    blue = deployer.deploy("minilm-crash", str(minilm_dir))
    green_source = copy_model(minilm_dir, sources, "crash-v2", note="after crash")
    # Simulate a worker that died right after loading its green: the revision exists, green is loaded.
    revision = deployer.repository.create_revision("minilm-crash", open_source(str(green_source), [sources]))
    deployer._load_green("minilm-crash", revision, "g1")
    assert count_instances(instance_markers, "minilm-crash") == 2

    result = deployer.deploy("minilm-crash", str(green_source), attempt_tag="g2")  # the next attempt

    assert result.revision == revision.revision and result.previous_revision == blue.revision
    assert v2_client.infer("minilm-crash", ["x"]).parameters["revision"] == revision.revision
    assert_no_green_left(v2_client, deployer, "minilm-crash")
    assert count_instances(instance_markers, "minilm-crash") == 1


class FailingPromoteClient(V2Client):
    """Injects a fault the real server will not produce on demand: the stable name refuses to reload."""

    def load(self, name: str, timeout: float | None = None) -> None:
        if "~" not in name and getattr(self, "armed", False):
            self.armed = False
            raise LoadFailed(f"injected failure loading {name!r}")
        super().load(name, timeout)


def test_a_failed_promote_puts_blue_back(model_repository, mlserver, minilm_dir, sources, v2_client):
    with FailingPromoteClient(mlserver.url) as client:
        deployer = GreenDeployer(client, model_repository, allowed_roots=[minilm_dir.parent, sources])
        blue = deployer.deploy("minilm-promote", str(minilm_dir))
        client.armed = True
        with pytest.raises(DeployFailed) as failure:
            deployer.deploy("minilm-promote", str(copy_model(minilm_dir, sources, "p2", note="p2")))
    assert failure.value.stage == "promote"
    assert deployer.live_revision("minilm-promote") == blue.revision
    assert v2_client.infer("minilm-promote", ["x"]).parameters["revision"] == blue.revision


def test_old_revisions_are_pruned_but_the_live_and_previous_are_kept(deployer, minilm_dir, sources):
    deployer.repository.keep_revisions = 2
    revisions = []
    for n in range(3):
        revisions.append(deployer.deploy("minilm-prune", str(copy_model(minilm_dir, sources, f"v{n}", f"v{n}"))))
    assert revisions[-1].pruned_revisions == [revisions[0].revision]
    assert set(deployer.repository.list_revisions("minilm-prune")) == {revisions[1].revision, revisions[2].revision}


def test_delete_unloads_every_name_and_removes_every_revision(deployer, v2_client, minilm_dir, model_repository):
    deployer.deploy("minilm-delete", str(minilm_dir))
    result = deployer.delete("minilm-delete")
    assert result.was_deployed and result.unloaded == ["minilm-delete"] and len(result.removed_revisions) == 1
    with pytest.raises(ModelNotFound):
        v2_client.infer("minilm-delete", ["gone"])
    assert not model_repository.model_dir("minilm-delete").exists()
    assert not any(p.name.startswith("minilm-delete") for p in model_repository.root.iterdir())


def test_deleting_a_model_that_is_not_deployed_is_harmless(deployer):
    events: list[StageEvent] = []
    result = deployer.delete("never-deployed", progress=events.append)
    assert not result.was_deployed and result.unloaded == [] and result.removed_revisions == []
    assert "not deployed" in events[-1].message


@pytest.mark.parametrize("bad_id", ["../etc", "a/b", "x" * 129, "bad id", ""])
def test_unsafe_ids_are_refused_before_anything_is_written(deployer, minilm_dir, model_repository, bad_id):
    before = sorted(model_repository.root.rglob("*"))
    with pytest.raises(DeployFailed) as failure:
        deployer.deploy(bad_id, str(minilm_dir))
    assert failure.value.stage == "validate" and failure.value.refused
    with pytest.raises(DeployFailed):
        deployer.delete(bad_id)
    assert sorted(model_repository.root.rglob("*")) == before


def test_an_escaping_source_is_refused(deployer, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    with pytest.raises(DeployFailed, match="outside the allowed roots") as failure:
        deployer.deploy("escapee", str(outside))
    assert failure.value.refused
    assert not deployer.repository.model_dir("escapee").exists()


def test_a_server_that_is_down_fails_the_deploy_with_a_clear_reason(model_repository, minilm_dir):
    with V2Client(f"http://127.0.0.1:{free_port()}", timeout=1) as client:
        deployer = GreenDeployer(client, model_repository, allowed_roots=[minilm_dir.parent])
        with pytest.raises(DeployFailed, match="not ready") as failure:
            deployer.deploy("unreachable", str(minilm_dir))
    assert failure.value.stage == "validate" and not failure.value.refused


def test_the_server_says_which_revision_it_serves(deployer, v2_client, minilm_dir):
    result = deployer.deploy("minilm-meta", str(minilm_dir))
    metadata = v2_client.model_metadata("minilm-meta")
    assert metadata["parameters"]["revision"] == result.revision
    assert metadata["outputs"][0]["shape"] == [-1, 384]
    assert deployer.served_revision("minilm-meta") == result.revision
    assert deployer.served_revision("never-deployed") is None


def test_restore_serves_the_live_revision_again_after_a_server_restart(deployer, v2_client, minilm_dir):
    result = deployer.deploy("minilm-restore", str(minilm_dir))
    v2_client.unload("minilm-restore")  # what a restarted server looks like: nothing loaded
    assert deployer.served_revision("minilm-restore") is None
    assert deployer.live_revision("minilm-restore") == result.revision

    assert deployer.restore("minilm-restore") == result.revision
    assert v2_client.infer("minilm-restore", ["back"]).parameters["revision"] == result.revision
    assert deployer.restore("minilm-restore") == result.revision  # already served: nothing to do
    assert deployer.restore("never-deployed") is None


def test_restore_refuses_a_revision_that_no_longer_matches_its_checksums(deployer, v2_client, minilm_dir):
    result = deployer.deploy("minilm-tampered", str(minilm_dir))
    v2_client.unload("minilm-tampered")
    tokenizer = deployer.repository.revision_path("minilm-tampered", result.revision) / "tokenizer.json"
    tokenizer.chmod(0o644)
    tokenizer.write_text("{}")
    with pytest.raises(DeployFailed) as failure:
        deployer.restore("minilm-tampered")
    assert failure.value.stage == "restore"
    assert result.revision in failure.value.reason and "tokenizer.json" in failure.value.reason  # which file
    assert deployer.served_revision("minilm-tampered") is None


def test_after_a_crash_mid_promote_the_previous_revision_is_what_was_served(deployer, minilm_dir, sources):
    blue = deployer.deploy("minilm-midpromote", str(minilm_dir))
    green_source = copy_model(minilm_dir, sources, "mid-v2", note="mid promote")
    revision = deployer.repository.create_revision("minilm-midpromote", open_source(str(green_source), [sources]))
    # The worker died after pointing the stable settings at green, before reloading the stable name.
    deployer.repository.write_settings("minilm-midpromote", STABLE, revision.revision)

    result = deployer.deploy("minilm-midpromote", str(green_source))

    assert result.revision == revision.revision
    assert result.previous_revision == blue.revision
    assert deployer.served_revision("minilm-midpromote") == revision.revision


class ExplodingSmokeClient(V2Client):
    """Injects what the real server will not produce on demand: an unexpected error in the smoke test."""

    def infer(self, name: str, texts: list[str]):
        if "~green" in name and getattr(self, "armed", False):
            raise RuntimeError("injected: the client broke")
        return super().infer(name, texts)


def test_an_unexpected_error_in_a_stage_is_recorded_there_and_leaves_no_green(
    model_repository, mlserver, minilm_dir, sources, v2_client
):
    with ExplodingSmokeClient(mlserver.url) as client:
        deployer = GreenDeployer(client, model_repository, allowed_roots=[minilm_dir.parent, sources])
        blue = deployer.deploy("minilm-boom", str(minilm_dir))
        client.armed = True
        events = []
        green_source = copy_model(minilm_dir, sources, "boom-v2", note="boom")
        with pytest.raises(RuntimeError):
            deployer.deploy("minilm-boom", str(green_source), progress=events.append, attempt_tag="g7")
    assert (events[-1].stage, events[-1].state) == ("smoke_test", "failed")
    assert "RuntimeError" in events[-1].message
    assert_no_green_left(v2_client, deployer, "minilm-boom")
    assert v2_client.infer("minilm-boom", ["still blue"]).parameters["revision"] == blue.revision
