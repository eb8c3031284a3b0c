"""Green deploys and deletes on a fleet of one real MLServer behind a real Envoy, serving the packaged
all-MiniLM-L6-v2. Several replicas: test_fleet.py."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from deployments.inference import (
    DeployFailed,
    Fleet,
    GreenDeployer,
    ModelNotFound,
    StageEvent,
    V2Client,
    open_source,
    served_name,
)
from deployments.inference.green import DEPLOY_STAGES
from deployments.inference.runtime_markers import count_instances
from deployments.inference.server import free_port
from tests.support.artifacts import truncate
from tests.support.sources import COMMIT, lay_out_hf_cache

pytestmark = pytest.mark.mlserver


def copy_model(minilm_dir: Path, sources: Path, name: str, note: str | None = None) -> Path:
    target = sources / name
    shutil.copytree(minilm_dir, target)
    if note is not None:  # a different file set makes a different revision of the same weights
        (target / "RELEASE_NOTES.txt").write_text(note)
    return target


def assert_only_live_loaded(v2_client: V2Client, deployer: GreenDeployer, model_id: str) -> None:
    """The replica has exactly the live revision of ``model_id`` ready, and the repository only its settings."""
    live = deployer.live_revision(model_id)
    ready = {entry["name"] for entry in v2_client.index() if entry.get("state") == "READY"}
    expected = {served_name(model_id, live)} if live else set()
    assert {name for name in ready if name.startswith(f"{model_id}~")} == expected
    assert deployer.repository.loadable_revisions(model_id) == ([live] if live else [])


def test_minilm_deploys_end_to_end_and_gives_real_embeddings(deployer, v2_client, front, minilm_dir):
    events: list[StageEvent] = []
    result = deployer.deploy("minilm-e2e", str(minilm_dir), expected_dimensions=384, progress=events.append)

    assert result.dimensions == 384
    assert stage_message(events, "bake", "started") == "no blue to keep loaded"
    assert result.endpoint.endswith("/v2/models/minilm-e2e/infer")
    assert [e.stage for e in events if e.state == "done"] == list(DEPLOY_STAGES)
    assert set(result.timings) == set(DEPLOY_STAGES)

    answer = front.infer("minilm-e2e", ["cat", "kitten", "stock market"])
    assert answer.parameters["revision"] == result.revision
    vectors = answer.embeddings
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4), "MiniLM's config normalises"
    cat, kitten, stocks = vectors
    assert cat @ kitten > cat @ stocks + 0.2
    assert result.replicas == [v2_client.base_url] and result.switch_ms is not None
    assert_only_live_loaded(v2_client, deployer, "minilm-e2e")


def test_redeploying_under_traffic_drops_no_request(deployer, minilm_dir, sources, envoy, instance_markers):
    blue = deployer.deploy("minilm-live", str(minilm_dir))
    green_source = copy_model(minilm_dir, sources, "minilm-v2", note="second revision")

    outcomes: list[str | None] = []
    errors: list[str] = []
    most_instances = 0
    stop = threading.Event()

    def fire() -> None:
        with V2Client(envoy.url, timeout=30) as client:
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
    assert most_instances == 2, "blue plus green, never three"
    assert count_instances(instance_markers, "minilm-live") == 1


def _unknown_architecture(path: Path) -> None:
    # Whole artifacts (damaged ones stop at fetch) that still fail to load.
    (path / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))


@pytest.mark.parametrize(
    ("breakage", "expected_dimensions", "stage", "named"),
    [
        # What the reason must name: the runtime's load error (not, say, a timeout), or both dimensions.
        (_unknown_architecture, None, "load_green", ["sentence-transformers"]),
        (None, 512, "smoke_test", ["512", "384"]),
    ],
    ids=["load-raises", "wrong-dimensions"],
)
def test_a_failing_green_leaves_blue_serving_and_no_green_behind(
    deployer, v2_client, front, minilm_dir, sources, breakage, expected_dimensions, stage, named, instance_markers
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
    assert stage not in failure.value.reason, "the stage is named once, before the reason"
    assert v2_client.base_url in failure.value.reason, "the reason names the replica"
    assert events[-1] == StageEvent(stage, "failed", failure.value.reason, events[-1].duration_s)
    assert deployer.live_revision("minilm-guarded") == blue.revision
    answer = front.infer("minilm-guarded", ["still here"])
    assert answer.parameters["revision"] == blue.revision
    assert answer.embeddings.shape == (1, 384)
    assert_only_live_loaded(v2_client, deployer, "minilm-guarded")
    assert count_instances(instance_markers, "minilm-guarded") == 1


def test_a_truncated_copy_fails_at_fetch_naming_its_source_file_and_blue_keeps_serving(
    deployer, v2_client, front, minilm_dir, sources
):
    blue = deployer.deploy("minilm-cut", str(minilm_dir))
    cut = copy_model(minilm_dir, sources, "cut", note="copied in a hurry")
    truncate(cut / "model.safetensors", 751_485)

    events: list[StageEvent] = []
    with pytest.raises(DeployFailed) as failure:
        deployer.deploy("minilm-cut", str(cut), progress=events.append)

    # A damaged copy is the operator's to fix and retry, not a request at fault: failed, not refused.
    assert failure.value.stage == "fetch" and not failure.value.refused
    assert failure.value.reason.startswith(f"model.safetensors in {cut} is truncated: ")
    assert events[-1] == StageEvent("fetch", "failed", failure.value.reason, events[-1].duration_s)
    assert "load_green" not in {event.stage for event in events}  # nothing was loaded
    assert deployer.repository.list_revisions("minilm-cut") == [blue.revision]  # the copy went nowhere
    assert front.infer("minilm-cut", ["still here"]).parameters["revision"] == blue.revision
    assert_only_live_loaded(v2_client, deployer, "minilm-cut")


def test_a_crash_mid_deploy_converges_when_run_again(deployer, v2_client, front, minilm_dir, sources, instance_markers):
    blue = deployer.deploy("minilm-crash", str(minilm_dir))
    green_source = copy_model(minilm_dir, sources, "crash-v2", note="after crash")
    # A worker that died right after loading its green: the revision exists, green is loaded and has a cluster.
    revision = deployer.repository.create_revision("minilm-crash", open_source(str(green_source), [sources]))
    deployer._load_green("minilm-crash", revision.revision, blue.revision, [v2_client.base_url])
    assert count_instances(instance_markers, "minilm-crash") == 2

    result = deployer.deploy("minilm-crash", str(green_source))  # the next attempt

    assert result.revision == revision.revision and result.previous_revision == blue.revision
    assert front.infer("minilm-crash", ["x"]).parameters["revision"] == revision.revision
    assert_only_live_loaded(v2_client, deployer, "minilm-crash")
    assert count_instances(instance_markers, "minilm-crash") == 1


def test_a_crash_after_the_switch_keeps_the_new_revision_and_retires_the_old(
    deployer, v2_client, front, minilm_dir, sources
):
    blue = deployer.deploy("minilm-midswitch", str(minilm_dir))
    green_source = copy_model(minilm_dir, sources, "mid-v2", note="mid switch")
    revision = deployer.repository.create_revision("minilm-midswitch", open_source(str(green_source), [sources]))
    # The worker died after the switch, during the bake: green is live, blue is still loaded.
    deployer._load_green("minilm-midswitch", revision.revision, blue.revision, [v2_client.base_url])
    deployer._switch("minilm-midswitch", revision.revision, blue.revision)

    result = deployer.deploy("minilm-midswitch", str(green_source))

    assert result.revision == revision.revision and result.previous_revision == revision.revision
    assert deployer.served_revision("minilm-midswitch") == revision.revision
    # The old blue was a leftover to the next attempt: retired, so one revision is loaded again.
    assert_only_live_loaded(v2_client, deployer, "minilm-midswitch")


class SilentRouterFleet(Fleet):
    """Injects a fault the real router will not produce on demand: it silently ignores the switch."""

    armed = False
    blue = ""

    def publish(self, repository, timeout: float = 10.0, routes_only: bool = False) -> str:
        if self.armed and repository.live_revision("minilm-switch") != self.blue:
            self.armed = False
            return "ignored"
        return super().publish(repository, timeout, routes_only)


def test_a_switch_the_router_does_not_confirm_puts_blue_back(
    envoy, mlserver, model_repository, minilm_dir, sources, front, monkeypatch
):
    monkeypatch.setattr("deployments.inference.green.SWITCH_CONFIRM_TIMEOUT", 0.5)
    fleet = SilentRouterFleet(envoy.url, [mlserver.url], envoy.routes)
    try:
        deployer = GreenDeployer(fleet, model_repository, allowed_roots=[minilm_dir.parent, sources])
        blue = deployer.deploy("minilm-switch", str(minilm_dir))
        fleet.blue, fleet.armed = blue.revision, True
        with pytest.raises(DeployFailed) as failure:
            deployer.deploy("minilm-switch", str(copy_model(minilm_dir, sources, "p2", note="p2")))
    finally:
        fleet.close()
    assert failure.value.stage == "switch" and "still answers" in failure.value.reason
    assert deployer.live_revision("minilm-switch") == blue.revision
    assert front.infer("minilm-switch", ["x"]).parameters["revision"] == blue.revision


def test_old_revisions_are_pruned_but_the_live_and_previous_are_kept(deployer, minilm_dir, sources):
    deployer.repository.keep_revisions = 2
    revisions = []
    for n in range(3):
        revisions.append(deployer.deploy("minilm-prune", str(copy_model(minilm_dir, sources, f"v{n}", f"v{n}"))))
    assert revisions[-1].pruned_revisions == [revisions[0].revision]
    assert set(deployer.repository.list_revisions("minilm-prune")) == {revisions[1].revision, revisions[2].revision}


def test_delete_unroutes_then_unloads_every_revision_and_removes_them(
    deployer, v2_client, front, minilm_dir, model_repository
):
    deployed = deployer.deploy("minilm-delete", str(minilm_dir))
    events: list[StageEvent] = []
    result = deployer.delete("minilm-delete", progress=events.append)
    assert [e.stage for e in events if e.state == "done"] == ["validate", "unroute", "unload", "remove", "done"]
    assert result.was_deployed and result.unloaded == [served_name("minilm-delete", deployed.revision)]
    assert len(result.removed_revisions) == 1
    with pytest.raises(ModelNotFound):
        front.infer("minilm-delete", ["gone"])
    assert not v2_client.model_ready(served_name("minilm-delete", deployed.revision))
    assert not model_repository.model_dir("minilm-delete").exists()


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


def test_a_fleet_with_no_replica_up_fails_the_deploy_with_a_clear_reason(envoy, model_repository, minilm_dir):
    down = f"http://127.0.0.1:{free_port()}"
    fleet = Fleet(envoy.url, [down], envoy.routes, timeout=1)
    try:
        deployer = GreenDeployer(fleet, model_repository, allowed_roots=[minilm_dir.parent])
        with pytest.raises(DeployFailed, match="no inference replica is ready") as failure:
            deployer.deploy("unreachable", str(minilm_dir))
    finally:
        fleet.close()
    assert failure.value.stage == "validate" and not failure.value.refused and down in failure.value.reason


def test_the_router_says_which_revision_it_serves(deployer, front, minilm_dir):
    result = deployer.deploy("minilm-meta", str(minilm_dir))
    metadata = front.model_metadata("minilm-meta")
    assert metadata["parameters"]["revision"] == result.revision
    assert metadata["outputs"][0]["shape"] == [-1, 384]
    assert deployer.served_revision("minilm-meta") == result.revision
    assert deployer.served_revision("never-deployed") is None


def test_restore_serves_the_live_revision_again_after_a_replica_restart(deployer, v2_client, front, minilm_dir):
    result = deployer.deploy("minilm-restore", str(minilm_dir))
    name = served_name("minilm-restore", result.revision)
    v2_client.unload(name)  # what a restarted replica looks like: nothing loaded
    assert "not ready on" in deployer.out_of_step("minilm-restore")

    assert deployer.restore("minilm-restore") == result.revision
    assert deployer.out_of_step("minilm-restore") is None
    assert front.infer("minilm-restore", ["back"]).parameters["revision"] == result.revision
    assert deployer.restore("minilm-restore") == result.revision  # already served: nothing to do
    assert deployer.restore("never-deployed") is None


def test_restore_refuses_a_revision_that_no_longer_matches_its_checksums(deployer, v2_client, minilm_dir):
    result = deployer.deploy("minilm-tampered", str(minilm_dir))
    v2_client.unload(served_name("minilm-tampered", result.revision))
    tokenizer = deployer.repository.revision_path("minilm-tampered", result.revision) / "tokenizer.json"
    tokenizer.chmod(0o644)
    tokenizer.write_text("{}")
    with pytest.raises(DeployFailed) as failure:
        deployer.restore("minilm-tampered")
    assert failure.value.stage == "restore"
    assert result.revision in failure.value.reason and "tokenizer.json" in failure.value.reason  # which file
    assert not v2_client.model_ready(served_name("minilm-tampered", result.revision))


def stage_message(events: list[StageEvent], stage: str, state: str = "done") -> str:
    return next(e.message for e in events if (e.stage, e.state) == (stage, state))


def test_a_kept_revision_deploys_again_without_a_fetch(deployer, v2_client, front, minilm_dir, sources):
    fetched: list[StageEvent] = []
    first = deployer.deploy("minilm-back", str(minilm_dir), progress=fetched.append)
    second = deployer.deploy("minilm-back", str(copy_model(minilm_dir, sources, "back-v2", note="v2")))
    events: list[StageEvent] = []
    rolled_back = deployer.deploy("minilm-back", "", revision=first.revision, progress=events.append)
    assert rolled_back.revision == first.revision and rolled_back.previous_revision == second.revision
    fetch = stage_message(events, "fetch")
    assert "kept, not fetched again" in fetch
    # The same revision says the same size fetched and kept: its artifacts, not its manifest and provenance.
    path = deployer.repository.revision_path("minilm-back", first.revision)
    artifacts = deployer.repository.manifest(path)
    size = sum((path / name).stat().st_size for name in artifacts)
    counted = f"revision {first.revision}: {len(artifacts)} files, {size:,} bytes of artifacts, verified"
    assert stage_message(fetched, "fetch").startswith(counted) and fetch.startswith(counted)
    assert front.infer("minilm-back", ["x"]).parameters["revision"] == first.revision
    assert_only_live_loaded(v2_client, deployer, "minilm-back")


@pytest.mark.parametrize(("revision", "refused"), [("0123456789abcdef", "not kept"), ("../../etc", "revision must be")])
def test_a_revision_that_is_not_kept_is_refused_at_validate_naming_the_kept_ones(
    deployer, minilm_dir, revision, refused
):
    kept = deployer.deploy("minilm-nokept", str(minilm_dir)).revision
    events: list[StageEvent] = []
    with pytest.raises(DeployFailed, match=refused) as failure:
        deployer.deploy("minilm-nokept", "", revision=revision, progress=events.append)
    assert failure.value.refused and failure.value.stage == "validate"
    assert [(e.stage, e.state) for e in events] == [("validate", "started"), ("validate", "failed")]
    if refused == "not kept":
        assert failure.value.reason == f"revision {revision} is not kept for minilm-nokept (kept: {kept})"


def test_an_unexpected_error_in_a_stage_is_recorded_there_and_leaves_no_green(
    deployer, minilm_dir, sources, v2_client, front, monkeypatch
):
    blue = deployer.deploy("minilm-boom", str(minilm_dir))

    def explode(*args, **kwargs):  # what the real replica will not produce on demand: a bug in our own code
        raise RuntimeError("injected: the smoke test broke")

    monkeypatch.setattr(deployer, "_smoke_test", explode)
    events = []
    green_source = copy_model(minilm_dir, sources, "boom-v2", note="boom")
    with pytest.raises(RuntimeError):
        deployer.deploy("minilm-boom", str(green_source), progress=events.append)
    assert (events[-1].stage, events[-1].state) == ("smoke_test", "failed")
    assert "RuntimeError" in events[-1].message
    assert_only_live_loaded(v2_client, deployer, "minilm-boom")
    assert front.infer("minilm-boom", ["still blue"]).parameters["revision"] == blue.revision


def test_a_rollback_asked_for_during_the_bake_is_a_switch_and_loads_nothing(
    deployer, front, minilm_dir, sources, instance_markers
):
    blue = deployer.deploy("minilm-bakeback", str(minilm_dir))
    baking = threading.Event()

    def note_bake(event: StageEvent) -> None:
        if (event.stage, event.state) == ("bake", "started"):
            baking.set()

    with pytest.raises(DeployFailed) as failure:
        deployer.deploy(
            "minilm-bakeback",
            str(copy_model(minilm_dir, sources, "bakeback-v2", note="v2")),
            bake_seconds=60,
            progress=note_bake,
            rollback_requested=lambda revision: f"an operator asks for {revision}" if baking.is_set() else None,
        )
    assert failure.value.stage == "bake"
    assert failure.value.reason == f"rolled back: an operator asks for {blue.revision}"
    assert failure.value.metadata["previous_revision"] == blue.revision
    assert front.infer("minilm-bakeback", ["x"]).parameters["revision"] == blue.revision

    events: list[StageEvent] = []
    again = deployer.deploy("minilm-bakeback", "", revision=blue.revision, progress=events.append)
    assert again.revision == blue.revision
    assert "(was loaded)" in next(e.message for e in events if e.stage == "load_green" and e.state == "done")
    assert count_instances(instance_markers, "minilm-bakeback") == 1


def test_a_model_deploys_from_the_hugging_face_cache_and_records_its_commit(
    deployer, front, minilm_dir, tmp_path, monkeypatch
):
    cache = tmp_path / "hf-cache"
    lay_out_hf_cache(cache, "sentence-transformers/all-MiniLM-L6-v2", minilm_dir)
    monkeypatch.setattr("deployments.inference.sources.hf_constants.HF_HUB_CACHE", str(cache))
    events: list[StageEvent] = []
    result = deployer.deploy("minilm-hf", "hf://sentence-transformers/all-MiniLM-L6-v2@main", progress=events.append)
    assert result.source == {
        "uri": "hf://sentence-transformers/all-MiniLM-L6-v2@main",
        "repo": "sentence-transformers/all-MiniLM-L6-v2",
        "revision": "main",
        "commit": COMMIT,
    }
    assert f"commit {COMMIT}" in next(e.message for e in events if e.stage == "fetch" and e.state == "done")
    assert front.infer("minilm-hf", ["from the cache"]).embeddings.shape == (1, 384)
