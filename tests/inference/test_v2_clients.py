"""Open Inference Protocol clients nobody here wrote, unmodified, against a real Envoy in front of a real
MLServer replica serving MiniLM: Triton's ``tritonclient`` (HTTP) and the protocol's own generated client
(``open-inference-openapi``). Liveness, readiness, server and model metadata, infer, an unknown model,
binary tensors, and a deploy in the middle of a client's session."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from mlserver import __version__ as mlserver_version
from open_inference.openapi.client import OpenInferenceClient
from open_inference.openapi.core.api_error import ApiError
from open_inference.openapi.types import InferenceRequest, RequestInput
from tritonclient.utils import InferenceServerException

from deployments.inference import Fleet, GreenDeployer, ModelRepository, V2Client, served_name
from deployments.inference.router import LocalEnvoy
from deployments.inference.server import LocalMLServer, free_port
from tests.support.processes import wait_for

pytestmark = pytest.mark.mlserver

MODEL = "all-minilm-l6-v2"
# The router's health checks run every second: what they see reaches liveness and readiness within this.
HEALTH_CHECKED = 10.0


class Served:
    """MiniLM deployed on the session's fleet, and the deployer that deployed it."""

    def __init__(self, deployer: GreenDeployer, sources: Path):
        self.deployer, self.sources = deployer, sources

    @property
    def revision(self) -> str:
        revision = self.deployer.live_revision(MODEL)
        assert revision is not None
        return revision

    def deploy_new_revision(self, note: str) -> str:
        """Deploy a copy of MiniLM that differs by one file: the same weights, a new revision."""
        source = self.sources / note
        shutil.copytree(self.sources / "minilm", source)
        (source / "RELEASE_NOTES.txt").write_text(note)
        return self.deployer.deploy(MODEL, str(source)).revision


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMLServer]:
    """A replica of this module's own: readiness is a fact of every routed model, so the models other
    modules leave routed on the session's fleet must not decide it."""
    base = tmp_path_factory.mktemp("v2-clients-mlserver")
    with LocalMLServer(repository_root=base / "repository", workdir=base / "server") as server:
        yield server


@pytest.fixture(scope="module")
def envoy(mlserver: LocalMLServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvoy]:
    """An Envoy in front of this module's replica alone."""
    with LocalEnvoy(tmp_path_factory.mktemp("v2-clients-envoy")) as router:
        yield router


@pytest.fixture(scope="module")
def served(envoy: LocalEnvoy, mlserver: LocalMLServer, minilm_dir: Path, tmp_path_factory) -> Iterator[Served]:
    sources = tmp_path_factory.mktemp("v2-client-sources")
    shutil.copytree(minilm_dir, sources / "minilm")
    fleet = Fleet(envoy.url, [mlserver.url], envoy.routes)
    repository = ModelRepository(mlserver.repository_root)
    deployer = GreenDeployer(fleet, repository, allowed_roots=[sources], ready_timeout=120)
    deployer.deploy(MODEL, str(sources / "minilm"))
    try:
        yield Served(deployer, sources)
    finally:
        deployer.delete(MODEL)
        fleet.close()


@pytest.fixture
def tritonclient(envoy: LocalEnvoy, served: Served) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url=envoy.url.removeprefix("http://"), network_timeout=60)
    yield client
    client.close()


@pytest.fixture
def oip(envoy: LocalEnvoy, served: Served) -> OpenInferenceClient:
    return OpenInferenceClient(base_url=envoy.url, timeout=60)


def triton_texts(texts: list[str], binary: bool = False) -> tuple[list[triton.InferInput], list]:
    text = triton.InferInput("text", [len(texts)], "BYTES")
    text.set_data_from_numpy(np.array(texts, dtype=object), binary_data=binary)
    return [text], [triton.InferRequestedOutput("embedding", binary_data=binary)]


def oip_texts(texts: list[str]) -> InferenceRequest:
    return InferenceRequest(inputs=[RequestInput(name="text", shape=[len(texts)], datatype="BYTES", data=texts)])


def publish_fleet(envoy: LocalEnvoy, replica_urls: list[str], served: Served) -> None:
    """Publish the routes as a fleet of ``replica_urls`` would have them."""
    fleet = Fleet(envoy.url, replica_urls, envoy.routes)
    try:
        fleet.publish(served.deployer.repository)
    finally:
        fleet.close()


# -- the server --------------------------------------------------------------------------------


def test_the_fleet_is_live_and_ready_to_both_clients(tritonclient, oip):
    assert tritonclient.is_server_live()
    assert tritonclient.is_server_ready()
    oip.check_server_liveness()  # raises unless 2xx
    oip.check_server_readiness()


def test_server_metadata_is_the_replicas_and_lists_no_binary_extension(tritonclient, oip):
    metadata = tritonclient.get_server_metadata()
    assert (metadata["name"], metadata["version"]) == ("mlserver", mlserver_version)
    assert "binary_tensor_data" not in metadata["extensions"]
    assert oip.read_server_metadata().dict() == metadata


def test_the_fleet_is_live_while_any_replica_is_and_not_when_none_is(envoy, mlserver, served):
    dead = f"http://127.0.0.1:{free_port()}"  # a replica that died: nothing listens there
    try:
        publish_fleet(envoy, [mlserver.url, dead], served)
        with triton.InferenceServerClient(envoy.url.removeprefix("http://")) as client:
            assert all(client.is_server_live() for _ in range(10)), "every call reaches the live replica"
            assert client.is_server_ready()
            publish_fleet(envoy, [dead], served)
            wait_for(lambda: not client.is_server_live(), HEALTH_CHECKED, "the router to find no replica live")
            assert not client.is_server_ready()
    finally:
        served.deployer.fleet.publish(served.deployer.repository)


def test_the_fleet_is_not_ready_while_a_routed_model_has_no_ready_replica(tritonclient, mlserver, served):
    name = served_name(MODEL, served.revision)
    with V2Client(mlserver.url) as replica:
        replica.unload(name)  # the replica lost it (as a restart would), the router still routes it
        try:
            wait_for(lambda: not tritonclient.is_server_ready(), HEALTH_CHECKED, "the fleet to turn not ready")
            assert tritonclient.is_server_live()
            with pytest.raises(ApiError):
                OpenInferenceClient(base_url=served.deployer.fleet.base_url).check_server_readiness()
        finally:
            replica.load(name, timeout=120)
    wait_for(tritonclient.is_server_ready, HEALTH_CHECKED, "the fleet to be ready again")


# -- a model -----------------------------------------------------------------------------------


def test_model_metadata_names_the_model_asked_for_and_its_revision_as_version(tritonclient, oip, served):
    assert tritonclient.is_model_ready(MODEL)
    metadata = tritonclient.get_model_metadata(MODEL)
    assert metadata["name"] == MODEL
    assert metadata["versions"] == [served.revision]
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
    assert metadata["parameters"]["revision"] == served.revision
    answer = oip.read_model_metadata(MODEL)
    assert (answer.name, answer.versions) == (MODEL, [served.revision])


def test_infer_answers_the_name_called_with_the_revision_as_its_version(tritonclient, oip, served):
    inputs, outputs = triton_texts(["cat", "kitten", "stock market"])
    result = tritonclient.infer(MODEL, inputs, outputs=outputs)
    response = result.get_response()
    assert (response["model_name"], response["model_version"]) == (MODEL, served.revision)
    assert response["parameters"]["revision"] == served.revision
    vectors = result.as_numpy("embedding")
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    cat, kitten, stocks = vectors
    assert cat @ kitten > cat @ stocks + 0.2

    answer = oip.model_infer(MODEL, request=oip_texts(["cat"]))
    assert (answer.model_name, answer.model_version) == (MODEL, served.revision)
    assert np.allclose(np.asarray(answer.outputs[0].data.__root__, dtype=np.float32), cat, atol=1e-5)


def test_the_version_metadata_gives_is_one_a_client_can_call(tritonclient, oip, served):
    version = tritonclient.get_model_metadata(MODEL)["versions"][0]
    assert tritonclient.is_model_ready(MODEL, model_version=version)
    assert tritonclient.get_model_metadata(MODEL, model_version=version)["name"] == MODEL
    inputs, outputs = triton_texts(["cat"])
    response = tritonclient.infer(MODEL, inputs, model_version=version, outputs=outputs).get_response()
    assert (response["model_name"], response["model_version"]) == (MODEL, version)
    answer = oip.model_version_infer(MODEL, version, request=oip_texts(["cat"]))
    assert (answer.model_name, answer.model_version) == (MODEL, version)


def test_a_call_pinned_to_the_revision_answers_its_own_name(mlserver, served):
    pinned = served_name(MODEL, served.revision)
    answer = httpx.post(f"{mlserver.url}/v2/models/{pinned}/infer", json=oip_texts(["cat"]).dict(), timeout=60)
    assert answer.status_code == 200
    assert (answer.json()["model_name"], answer.json()["model_version"]) == (pinned, served.revision)


def test_binary_tensors_are_refused_with_a_reason_not_a_validation_dump(tritonclient):
    inputs, outputs = triton_texts(["cat"], binary=True)  # tritonclient's default
    with pytest.raises(InferenceServerException) as refused:
        tritonclient.infer(MODEL, inputs, outputs=outputs)
    assert refused.value.status() == "400"
    assert "binary tensor data is not supported" in refused.value.message()


def test_json_inputs_asking_for_binary_outputs_get_json_the_client_reads(tritonclient):
    inputs, _ = triton_texts(["cat"])
    result = tritonclient.infer(MODEL, inputs)  # no outputs named: tritonclient asks for binary ones
    assert result.as_numpy("embedding").shape == (1, 384)


def test_an_unknown_model_is_a_404_naming_it_to_both_clients(tritonclient, oip):
    assert not tritonclient.is_model_ready("no-such-model")
    with pytest.raises(InferenceServerException) as unknown:
        tritonclient.get_model_metadata("no-such-model")
    assert unknown.value.status() == "404"
    with pytest.raises(InferenceServerException, match="no model is routed"):
        tritonclient.infer("no-such-model", triton_texts(["cat"])[0])
    with pytest.raises(ApiError) as missing:
        oip.read_model_metadata("no-such-model")
    assert missing.value.status_code == 404 and missing.value.body["model"] == "no-such-model"


# -- a deploy in the middle of a session -------------------------------------------------------


def test_a_deploy_mid_session_keeps_both_clients_working_under_a_stable_name(envoy, served):
    blue = served.revision
    seen: list[tuple[str, str]] = []  # (model_name, model_version) of every answer
    errors: list[str] = []
    stop = threading.Event()

    def triton_session() -> None:
        with triton.InferenceServerClient(envoy.url.removeprefix("http://"), network_timeout=60) as client:
            assert client.get_model_metadata(MODEL)["name"] == MODEL
            inputs, outputs = triton_texts(["steady traffic"])
            while not stop.is_set():
                try:
                    response = client.infer(MODEL, inputs, outputs=outputs).get_response()
                    seen.append((response["model_name"], response["model_version"]))
                except Exception as exc:  # every failure counts, whatever its kind
                    errors.append(f"{exc!r}: {exc}")

    def oip_session() -> None:
        client = OpenInferenceClient(base_url=envoy.url, timeout=60)
        while not stop.is_set():
            try:
                answer = client.model_infer(MODEL, request=oip_texts(["steady traffic"]))
                seen.append((answer.model_name, answer.model_version))
                client.check_server_readiness()
            except Exception as exc:
                errors.append(f"{exc!r}: {exc}")

    threads = [threading.Thread(target=triton_session), threading.Thread(target=oip_session)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        green = served.deploy_new_revision("mid-session")
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)

    assert errors == []
    assert {name for name, _ in seen} == {MODEL}, "the name a client compares never changes"
    assert len(seen) > 20
    assert seen[0][1] == blue and seen[-1][1] == green and {version for _, version in seen} == {blue, green}
    with triton.InferenceServerClient(envoy.url.removeprefix("http://")) as client:
        metadata = client.get_model_metadata(MODEL)
        assert (metadata["name"], metadata["versions"]) == (MODEL, [green])
        assert client.is_server_ready()


def test_the_front_door_answers_json_errors_for_the_server_paths_it_does_not_serve(envoy, served):
    answer = httpx.get(f"{envoy.url}/v2/repository/index")
    assert answer.status_code == 404 and answer.json()["error"] == "no model is routed at this path"
