"""Capacity by memory, through the real pipeline and the session's real MLServer: each revision's
footprint is recorded when a deploy loads it, and a deploy whose green does not fit in
REPLICA_MEMORY_BYTES beside what the replica holds (blue included) is refused with the numbers."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from deployments import jobs, selectors, services
from deployments.inference import ModelRepository, V2Client, open_source, served_name
from deployments.inference.packaged import packaged_model_dir
from deployments.models import DeploymentTask, EmbeddingModel, ModelRevision, TaskStatus
from deployments.services.deployer import deployer_session
from deployments.services.memory import plan_green
from tests.support.factories import EmbeddingModelFactory, RunningDeploymentFactory
from tests.support.tiny_models import TINY_DIMENSIONS

pytestmark = [pytest.mark.mlserver, pytest.mark.django_db]

MB = 1_000_000


@pytest.fixture
def memory_settings(inference_settings):
    # The tests' transaction holds the lease row; keep the heartbeat thread from waiting on it.
    inference_settings.TASK_LEASE_SECONDS = 600
    return inference_settings


@pytest.fixture
def tiny_source(tiny_model_dir: Path, sources_root: Path) -> Path:
    return Path(shutil.copytree(tiny_model_dir, sources_root / "tiny"))


def other_revision_of(source: Path) -> Path:
    """The same weights under another revision id: a changed setting changes the manifest."""
    copy = Path(shutil.copytree(source, source.with_name(source.name + "-v2")))
    settings_file = copy / "sentence_bert_config.json"
    settings_file.write_text(json.dumps({**json.loads(settings_file.read_text()), "max_seq_length": 64}))
    return copy


def deploy(model_id: str, **config: object) -> DeploymentTask:
    task = services.submit_deployment(model_id, config=config).task
    jobs.run_task(str(task.pk))
    task.refresh_from_db()
    return task


def parameter_bytes(folder: Path) -> int:
    """The float32 bytes of the model's parameters, counted by loading it here (buffers not included)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    return sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())


@pytest.mark.parametrize("kind", ["tiny", "minilm"])
def test_the_footprint_recorded_after_a_deploy_is_the_models_parameter_bytes(memory_settings, tiny_source, kind):
    source = tiny_source if kind == "tiny" else packaged_model_dir()
    model = EmbeddingModelFactory(id=f"mem-footprint-{kind}", source=str(source))

    task = deploy(model.id)

    assert task.status == TaskStatus.DONE, task.detail
    recorded = ModelRevision.objects.get(pk=served_name(model.id, task.metadata["revision"]))
    assert recorded.measured and recorded.embedding_model_id == model.id
    # What the runtime counted: the parameters, plus buffers (position ids and the like) within 1%.
    expected = parameter_bytes(source)
    assert expected <= recorded.memory_bytes <= expected * 1.01
    assert task.metadata["memory_bytes"] == recorded.memory_bytes
    # The estimate from the weight files (the tiny model's are float16, loaded as float32) agrees as closely.
    repository = ModelRepository(memory_settings.MODEL_REPOSITORY_ROOT)
    estimate = repository.estimated_memory_bytes(model.id, task.metadata["revision"])
    assert expected <= estimate <= expected * 1.01


def test_a_deploy_that_does_not_fit_is_refused_with_the_numbers_and_one_that_fits_passes(
    memory_settings, tiny_source, mlserver
):
    memory_settings.REPLICA_MEMORY_BYTES = 20 * MB
    tiny = EmbeddingModelFactory(id="mem-fits", source=str(tiny_source), dimensions=TINY_DIMENSIONS)
    minilm = EmbeddingModelFactory(id="mem-too-big")

    fits = deploy(tiny.id)
    refused = deploy(minilm.id)

    assert fits.status == TaskStatus.DONE, fits.detail
    tiny_bytes = ModelRevision.objects.get(pk=served_name(tiny.id, fits.metadata["revision"])).memory_bytes
    assert refused.status == TaskStatus.REFUSED
    assert refused.metadata["failed_stage"] == "load_green"
    free = (20 * MB - tiny_bytes) / MB
    assert f"needs 90.9 MB, replica {mlserver.url} has {free:.1f} MB free of 20.0 MB" in refused.detail
    assert f"1 revision(s) use {tiny_bytes / MB:.1f} MB" in refused.detail
    # Nothing of the refused model was loaded, its slot is given back, the first one still serves.
    with V2Client(mlserver.url) as replica:
        ready = {entry["name"] for entry in replica.index() if entry.get("state") == "READY"}
    assert not any(name.startswith("mem-too-big~") for name in ready)
    assert EmbeddingModel.objects.get(pk=minilm.id).state == EmbeddingModel.State.NOT_DEPLOYED
    assert served_name(tiny.id, fits.metadata["revision"]) in ready


def test_during_a_deploy_blue_and_green_are_both_counted(memory_settings, tiny_source):
    model = EmbeddingModelFactory(id="mem-blue-green", source=str(tiny_source), dimensions=TINY_DIMENSIONS)
    blue = deploy(model.id)
    assert blue.status == TaskStatus.DONE, blue.detail
    blue_bytes = blue.metadata["memory_bytes"]
    model.source = str(other_revision_of(tiny_source))
    model.save()

    # Room for one revision of it but not two: green cannot load beside blue.
    memory_settings.REPLICA_MEMORY_BYTES = int(blue_bytes * 1.5)
    refused = deploy(model.id)
    assert refused.status == TaskStatus.REFUSED
    assert f"1 revision(s) use {blue_bytes / MB:.1f} MB" in refused.detail
    model.refresh_from_db()
    assert model.live_revision == blue.metadata["revision"]  # blue keeps serving

    memory_settings.REPLICA_MEMORY_BYTES = int(blue_bytes * 2.5)
    green = deploy(model.id)
    assert green.status == TaskStatus.DONE, green.detail
    assert green.metadata["previous_revision"] == blue.metadata["revision"]
    assert ModelRevision.objects.filter(embedding_model=model).count() == 2  # both kept, both recorded

    # Deleted from the server, its revisions are gone from the repository and their footprints with them.
    deletion = services.submit_deletion(model.id).task
    assert jobs.run_task(str(deletion.pk)) == TaskStatus.DONE
    assert not ModelRevision.objects.filter(embedding_model=model).exists()


def test_a_running_deploy_of_another_model_holds_its_reservation_until_it_ends(memory_settings, tiny_source):
    memory_settings.REPLICA_MEMORY_BYTES = 50 * MB
    other = EmbeddingModelFactory(id="mem-in-flight")
    running = RunningDeploymentFactory(embedding_model_id=other.id)
    ModelRevision.objects.create(
        name=served_name(other.id, "0123456789abcdef"),
        embedding_model=other,
        revision="0123456789abcdef",
        memory_bytes=48 * MB,
        loading_task=running,
    )
    model = EmbeddingModelFactory(id="mem-after", source=str(tiny_source), dimensions=TINY_DIMENSIONS)

    refused = deploy(model.id)
    assert refused.status == TaskStatus.REFUSED
    assert "has 2.0 MB free of 50.0 MB (REPLICA_MEMORY_BYTES): 1 revision(s) use 48.0 MB" in refused.detail

    DeploymentTask.objects.filter(pk=running.pk).update(status=TaskStatus.FAILED)
    assert deploy(model.id).status == TaskStatus.DONE


def test_of_two_deploys_planned_for_the_last_memory_the_second_is_refused_until_the_first_ends(
    memory_settings, tiny_source, mlserver
):
    """The planner's own reservation counts for every later plan (both run under the capacity lock)."""
    first, second = (
        EmbeddingModelFactory(id=f"mem-race-{n}", source=str(tiny_source), dimensions=TINY_DIMENSIONS) for n in (1, 2)
    )
    first_task, second_task = (RunningDeploymentFactory(embedding_model_id=model.id) for model in (first, second))
    with deployer_session() as deployer:
        revisions = [
            deployer.repository.create_revision(model.id, open_source(str(tiny_source), [tiny_source.parent]))
            for model in (first, second)
        ]
        estimate = deployer.repository.estimated_memory_bytes(first.id, revisions[0].revision)
        memory_settings.REPLICA_MEMORY_BYTES = int(estimate * 1.5)  # room for one of them

        assert plan_green(first_task.pk, deployer, revisions[0], [mlserver.url]) is None
        refusal = plan_green(second_task.pk, deployer, revisions[1], [mlserver.url])
        assert refusal and f"1 revision(s) use {estimate / MB:.1f} MB" in refusal
        assert f"needs {estimate / MB:.1f} MB, replica {mlserver.url}" in refusal

        DeploymentTask.objects.filter(pk=first_task.pk).update(status=TaskStatus.FAILED)  # it ended, unloaded
        assert plan_green(second_task.pk, deployer, revisions[1], [mlserver.url]) is None
    assert ModelRevision.objects.get(pk=served_name(second.id, revisions[1].revision)).loading_task_id == second_task.pk


def test_a_deploy_that_ended_after_the_replicas_were_read_still_counts_for_what_they_may_miss(memory_settings):
    """The planner reads the replicas before taking the lock: what a deploy ending meanwhile loaded
    is not in that read, so its reservation still counts; one that ended before the read does not."""
    memory_settings.REPLICA_MEMORY_BYTES = 100 * MB
    read_at = timezone.now()
    ended = {"mem-ended-after": read_at + timedelta(seconds=1), "mem-ended-before": read_at - timedelta(seconds=1)}
    for model_id, finished_at in ended.items():
        model = EmbeddingModelFactory(id=model_id)
        task = RunningDeploymentFactory(embedding_model_id=model.id, status=TaskStatus.DONE, finished_at=finished_at)
        ModelRevision.objects.create(
            name=served_name(model.id, "0123456789abcdef"),
            embedding_model=model,
            revision="0123456789abcdef",
            memory_bytes=30 * MB,
            loading_task=task,
        )
    after = served_name("mem-ended-after", "0123456789abcdef")

    (memory,) = selectors.replica_memory({"http://replica": set()}, ended_since=read_at).values()
    assert memory.held == {after: 30 * MB} and memory.free_bytes == 70 * MB
    # Once the read shows it loaded, it is counted once, as loaded.
    (memory,) = selectors.replica_memory({"http://replica": {after}}, ended_since=read_at).values()
    assert memory.held == {after: 30 * MB}
    # The admin's and the metrics' view (no read in progress): ended deploys reserve nothing.
    (memory,) = selectors.replica_memory({"http://replica": set()}).values()
    assert memory.held == {} and memory.used_bytes == 0
