"""models:/ and runs:/ sources against a real MLflow tracking server (tests/support/mlflow.py): MiniLM
logged as a run's artifacts and registered, as a training pipeline does; deploys on the real fleet."""

from __future__ import annotations

import shutil
import sqlite3
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from deployments.inference import DeployFailed, ModelRepository, SourceRefused, open_source
from deployments.inference.errors import InvalidArtifacts, SourceUnavailable
from deployments.inference.mlflow_source import mlflow_ui_url, models_with_alias, registered_versions
from deployments.inference.server import free_port
from tests.support.listener import RecordingServer
from tests.support.mlflow import NAME, log_model_folder, run_with_artifacts_at, set_alias

pytestmark = pytest.mark.mlflow


@pytest.fixture
def registry(mlflow_registry, monkeypatch) -> dict[str, str]:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_registry["uri"])  # the operator's own server: allowed
    return mlflow_registry


@pytest.fixture(autouse=True)
def champion_on_version_1(request):
    """Tests that move the alias leave it as they found it."""
    registry = request.getfixturevalue("mlflow_registry") if "registry" in request.fixturenames else None
    yield
    if registry is not None:
        set_alias(registry["uri"], NAME, "champion", "1")


@pytest.fixture
def no_retries(monkeypatch):
    # An unanswered call fails at once instead of after MLflow's retries.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


def files_of(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_a_version_is_downloaded_into_a_revision_that_records_what_it_resolved_to(registry, minilm_dir, tmp_path):
    repository = ModelRepository(tmp_path / "repository")
    source = open_source(f"models:/{NAME}/1", [], registry["uri"])

    revision = repository.create_revision("from-mlflow", source)

    expected = {
        "registered_model": NAME,
        "version": "1",
        "run_id": registry["run1"],
        "experiment_id": "0",
        "artifact_path": "model",
        "tracking_uri": registry["uri"],
    }
    assert source.resolved == expected
    assert repository.provenance("from-mlflow", revision.revision) == {"uri": f"models:/{NAME}/1", **expected}
    assert sorted(repository.manifest(revision.path)) == [
        name for name in files_of(minilm_dir) if name not in ("MANIFEST.sha256", "PROVENANCE.json")
    ]
    repository.verify(revision.path)
    # The download was moved in, not left behind or copied twice.
    assert [p.name for p in repository.model_dir("from-mlflow").iterdir()] == ["revisions"]


def test_what_was_resolved_names_the_server_without_the_password_its_uri_holds(registry, monkeypatch):
    host = registry["uri"].removeprefix("http://")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://deployer:secret@{host}")
    assert open_source(f"models:/{NAME}/1", []).resolve()["tracking_uri"] == registry["uri"]


def test_an_alias_is_resolved_to_the_version_it_names_at_that_moment(registry):
    first = open_source(f"models:/{NAME}@champion", [], registry["uri"])
    assert first.resolve()["version"] == "1" and first.resolved["alias"] == "champion"

    set_alias(registry["uri"], NAME, "champion", "2")

    assert first.resolved["version"] == "1"  # what was resolved stays what it was
    assert open_source(f"models:/{NAME}@champion", [], registry["uri"]).resolve()["version"] == "2"


def test_a_run_resolves_to_its_artifacts(registry, tmp_path):
    source = open_source(f"runs:/{registry['run2']}/model", [], registry["uri"])
    revision = ModelRepository(tmp_path).create_revision("run", source)
    assert "RELEASE_NOTES.txt" in ModelRepository(tmp_path).manifest(revision.path)
    assert source.resolved["run_id"] == registry["run2"] and source.resolved["artifact_path"] == "model"
    assert mlflow_ui_url(source.resolved) == (
        f"{registry['uri']}/#/experiments/{source.resolved['experiment_id']}/runs/{registry['run2']}"
    )


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("models:/no-such-model/1", "not found"),
        (f"models:/{NAME}/99", "not found"),
        (f"models:/{NAME}@no-such-alias", "alias no-such-alias not found"),
        (f"runs:/{'0' * 32}/model", "not found"),
    ],
)
def test_a_name_mlflow_does_not_know_is_refused_with_its_reason(registry, uri, reason):
    with pytest.raises(SourceRefused, match=f"MLflow says .*{reason}"):
        open_source(uri, [], registry["uri"]).resolve()


@pytest.mark.parametrize(
    "uri",
    [
        "models:/",
        "models:/name",
        "models:/name/0",
        "models:/name/v1",
        "runs:/not-a-run-id/model",
        "runs:/" + "a" * 32 + "/../x",
        "runs:/" + "a" * 32 + "/%2e%2e/x",
        "runs:/" + "a" * 32 + "/model/..%5Cx",
    ],
)
def test_malformed_uris_are_refused_without_asking_the_server(uri):
    with pytest.raises(SourceRefused):
        open_source(uri, [], "http://127.0.0.1:9")  # nothing listens there: no call is made


def test_without_a_tracking_server_an_mlflow_source_is_refused(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(SourceRefused, match="set MLFLOW_TRACKING_URI"):
        open_source("models:/name/1", [])


_watching: list[list[str]] = []  # the open watches of local_stores_opened (an audit hook cannot be removed)


def _note_local_store(event: str, args: tuple) -> None:
    if event == "sqlite3.connect" and _watching:
        _watching[-1].append(str(args[0]))


sys.addaudithook(_note_local_store)


@contextmanager
def local_stores_opened() -> Iterator[list[str]]:
    """The SQLite databases this process opens meanwhile (MLflow's local stores are SQLite files)."""
    opened: list[str] = []
    _watching.append(opened)
    try:
        yield opened
    finally:
        _watching.remove(opened)


def test_no_mlflow_call_falls_back_to_a_local_store_where_it_runs(registry, tmp_path, monkeypatch):
    """Given no tracking URI, MLflow's client opens sqlite:///mlflow.db with artifacts in ./mlruns, in the
    working directory (a checkout, for make run and make test). Every call here names its server, so
    resolving, downloading, listing versions and aliases, and refusing a source without a server open
    no local store and write nothing where they run."""
    where_it_runs = tmp_path / "cwd"
    where_it_runs.mkdir()
    monkeypatch.chdir(where_it_runs)
    with local_stores_opened() as opened:
        for uri in (f"models:/{NAME}/1", f"models:/{NAME}@champion", f"runs:/{registry['run1']}/model"):
            ModelRepository(tmp_path / "repository").create_revision("elsewhere", open_source(uri, [], registry["uri"]))
        assert registered_versions(registry["uri"], NAME) == ["1", "2"]
        assert models_with_alias(registry["uri"], "champion")[NAME] == "1"  # other tests register more
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        with pytest.raises(SourceRefused, match="set MLFLOW_TRACKING_URI"):
            open_source(f"models:/{NAME}/1", []).resolve()
        with local_stores_opened() as control:  # the watch does see a database opened
            sqlite3.connect(tmp_path / "probe.db").close()
    assert control == [str(tmp_path / "probe.db")]
    assert opened == [] and list(where_it_runs.iterdir()) == []


def test_an_unreachable_tracking_server_is_unavailable_not_refused(no_retries, monkeypatch):
    server = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_ALLOWED_TRACKING_URIS", server)
    source = open_source("models:/name/1", [], server)
    with pytest.raises(SourceUnavailable, match=r"tracking server .* failed"):
        source.resolve()


def test_a_run_without_artifacts_is_refused_at_once_rather_than_waited_on(registry):
    """mlflow#16467 (open): download_artifacts of a run with no artifacts never returns. We look first."""
    from mlflow import MlflowClient

    client = MlflowClient(registry["uri"])
    run = client.create_run(experiment_id="0")
    client.set_terminated(run.info.run_id)
    outcome: list[BaseException] = []

    def fetch() -> None:
        try:
            open_source(f"runs:/{run.info.run_id}/model", [], registry["uri"]).resolve()
        except BaseException as exc:  # handed to the test's thread
            outcome.append(exc)

    worker = threading.Thread(target=fetch, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "resolving a run without artifacts hung"
    assert len(outcome) == 1 and isinstance(outcome[0], SourceRefused) and "has no artifacts" in str(outcome[0])


def test_artifacts_that_are_not_a_sentence_transformers_folder_say_what_they_hold(registry, tmp_path):
    folder = tmp_path / "pickle"
    folder.mkdir()
    (folder / "model.pkl").write_bytes(b"\x80\x04N.")
    run_id = log_model_folder(registry["uri"], folder)
    source = open_source(f"runs:/{run_id}/model", [], registry["uri"])
    with pytest.raises(InvalidArtifacts, match=r"not a sentence-transformers folder .*model\.pkl"):
        ModelRepository(tmp_path / "repository").create_revision("pickled", source)


def test_an_mlflow_model_with_the_sentence_transformers_flavor_deploys_its_data_folder(registry, minilm_dir, tmp_path):
    """The layout mlflow.sentence_transformers.log_model writes: MLmodel, and the model in a data folder."""
    logged = tmp_path / "logged"
    shutil.copytree(minilm_dir, logged / "model.sentence_transformer")
    (logged / "MLmodel").write_text(
        "flavors:\n  sentence_transformers:\n    data: model.sentence_transformer\n  python_function: {}\n"
    )
    run_id = log_model_folder(registry["uri"], logged)
    repository = ModelRepository(tmp_path / "repository")
    revision = repository.create_revision("flavored", open_source(f"runs:/{run_id}/model", [], registry["uri"]))
    assert sorted(repository.manifest(revision.path)) == files_of(minilm_dir)


# -- where the registry says the artifacts are: its data, not ours --------------------------------


def test_a_run_whose_artifacts_are_on_another_host_is_refused_and_that_host_is_sent_nothing(
    registry, elsewhere, mlflow_token
):
    run_id = run_with_artifacts_at(registry["uri"], f"{elsewhere.url}/artifacts")
    with pytest.raises(SourceRefused, match=rf"on {elsewhere.url}, not on the tracking server; allowed: "):
        open_source(f"runs:/{run_id}/model", [], registry["uri"]).resolve()
    assert elsewhere.received == []


def test_a_run_whose_artifacts_are_files_of_this_machine_is_refused(registry, minilm_dir, tmp_path):
    run_id = run_with_artifacts_at(registry["uri"], (tmp_path / "local").as_uri())
    shutil.copytree(minilm_dir, tmp_path / "local" / run_id / "artifacts" / "model")  # readable, were it read
    with pytest.raises(SourceRefused, match="a path on this machine"):
        open_source(f"runs:/{run_id}/model", [], registry["uri"]).resolve()


def test_a_version_whose_artifacts_are_on_another_host_is_refused(registry, elsewhere, mlflow_token):
    from mlflow import MlflowClient

    client = MlflowClient(registry["uri"], registry_uri=registry["uri"])
    name = f"elsewhere-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    version = client.create_model_version(name, source=f"{elsewhere.url}/model")
    with pytest.raises(SourceRefused, match=rf"on {elsewhere.url}, not on the tracking server"):
        open_source(f"models:/{name}/{version.version}", [], registry["uri"]).resolve()
    assert elsewhere.received == []


@pytest.mark.parametrize("credentials", ["token", "user and password"])
def test_a_redirect_from_an_allowed_server_to_another_host_carries_no_credentials(
    credentials, elsewhere, monkeypatch, no_retries
):
    """requests drops the Authorization header when a redirect leaves the host (or port): MLflow's calls
    follow redirects, and neither its bearer token nor its basic auth goes along."""
    if credentials == "token":
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "registry-secret")
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "deployer")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "registry-secret")
    with RecordingServer(redirect_to=elsewhere.url) as allowed:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", allowed.url)
        with pytest.raises(SourceRefused, match="MLflow says"):
            open_source("models:/name/1", [], allowed.url).resolve()
    assert allowed.received[0].authorization  # the allowed server was sent the credentials
    assert elsewhere.received and [request.authorization for request in elsewhere.received] == [None]


# -- deploys on the real fleet -------------------------------------------------------------------


@pytest.mark.mlserver
def test_deploys_by_version_and_by_alias_keep_the_version_resolved_when_the_alias_moves(registry, deployer, front):
    by_alias = deployer.deploy("mlflow-live", f"models:/{NAME}@champion", tracking_uri=registry["uri"])
    assert (by_alias.source["version"], by_alias.source["alias"]) == ("1", "champion")
    assert front.infer("mlflow-live", ["from the registry"]).embeddings.shape == (1, 384)

    set_alias(registry["uri"], NAME, "champion", "2")

    # What was deployed still has its answer: version 1, in the deploy's record and on the revision.
    assert by_alias.source["version"] == "1"
    assert deployer.repository.provenance("mlflow-live", by_alias.revision)["version"] == "1"
    moved = deployer.deploy("mlflow-live", f"models:/{NAME}@champion", tracking_uri=registry["uri"])
    assert moved.source["version"] == "2" and moved.revision != by_alias.revision
    by_version = deployer.deploy("mlflow-live", f"models:/{NAME}/1", tracking_uri=registry["uri"])
    assert by_version.revision == by_alias.revision  # the same bytes are the same revision
    assert front.infer("mlflow-live", ["back on one"]).parameters["revision"] == by_alias.revision


@pytest.mark.mlserver
def test_fetch_failures_are_refused_or_failed_as_retrying_could_help(
    registry, deployer, tmp_path, no_retries, monkeypatch
):
    with pytest.raises(DeployFailed) as unknown:
        deployer.deploy("mlflow-bad", f"models:/{NAME}@nobody", tracking_uri=registry["uri"])
    assert (unknown.value.stage, unknown.value.refused) == ("fetch", True)
    assert "alias nobody not found" in unknown.value.reason

    server = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(DeployFailed) as not_allowed:
        deployer.deploy("mlflow-bad", f"models:/{NAME}/1", tracking_uri=server)
    assert (not_allowed.value.stage, not_allowed.value.refused) == ("fetch", True)
    assert f"{server} is not allowed; allowed: {registry['uri']}" in not_allowed.value.reason

    monkeypatch.setenv("MLFLOW_ALLOWED_TRACKING_URIS", server)
    with pytest.raises(DeployFailed) as unreachable:
        deployer.deploy("mlflow-bad", f"models:/{NAME}/1", tracking_uri=server)
    assert (unreachable.value.stage, unreachable.value.refused) == ("fetch", False)  # retry when it answers
    assert "tracking server" in unreachable.value.reason

    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "README.md").write_text("no model here")
    run_id = log_model_folder(registry["uri"], folder)
    with pytest.raises(DeployFailed) as not_a_model:
        deployer.deploy("mlflow-bad", f"runs:/{run_id}/model", tracking_uri=registry["uri"])
    assert (not_a_model.value.stage, not_a_model.value.refused) == ("fetch", False)
    assert "not a sentence-transformers folder" in not_a_model.value.reason and "README.md" in not_a_model.value.reason
