"""The runtime in-process, without a server: what MLServer's swap relies on."""

import asyncio

import numpy as np
import pytest
from mlserver.codecs import StringCodec
from mlserver.errors import MLServerError
from mlserver.settings import ModelParameters, ModelSettings
from mlserver.types import InferenceRequest

from deployments.inference.runtime import SentenceTransformerRuntime, resolve_device
from tests.support.tiny_models import TINY_DIMENSIONS, build_tiny_model, folder_size


def make_runtime(uri: str, revision: str = "r1") -> SentenceTransformerRuntime:
    settings = ModelSettings(
        name="runtime-test",
        implementation=SentenceTransformerRuntime,
        parameters=ModelParameters(uri=uri, extra={"revision": revision}),
    )
    return SentenceTransformerRuntime(settings)


def request(texts: list[str]) -> InferenceRequest:
    return InferenceRequest(inputs=[StringCodec.encode_input("text", texts, use_bytes=True)])


def test_requests_already_running_finish_when_the_instance_is_unloaded(minilm_dir):
    async def scenario():
        runtime = make_runtime(str(minilm_dir))
        await runtime.load()
        running = asyncio.create_task(runtime.predict(request(["a long batch of text"] * 512)))
        await asyncio.sleep(0.01)  # the batch is now encoding in its thread
        assert not running.done()
        await runtime.unload()  # what the server does to the old instance after a swap
        assert running.done(), "unload must wait for the requests it already had"
        return running.result()

    response = asyncio.run(scenario())
    output = response.outputs[0]
    assert output.shape == [512, 384]
    assert np.isfinite(np.asarray(output.data, dtype=np.float32)).all()
    assert response.parameters.revision == "r1"


def test_a_model_that_cannot_load_says_why(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")

    with pytest.raises(MLServerError, match="cannot load a sentence-transformers model") as failure:
        asyncio.run(make_runtime(str(broken)).load())
    assert failure.value.status_code == 400


def test_bad_input_is_a_400_naming_the_problem(minilm_dir):
    async def scenario():
        runtime = make_runtime(str(minilm_dir))
        await runtime.load()
        numbers = InferenceRequest(inputs=[{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}])
        with pytest.raises(MLServerError, match="must be BYTES") as failure:
            await runtime.predict(numbers)
        await runtime.unload()
        return failure.value

    assert asyncio.run(scenario()).status_code == 400


@pytest.mark.parametrize(
    "requested,cuda_available,device",
    [("auto", False, "cpu"), ("auto", True, "cuda"), ("cpu", True, "cpu"), ("cuda:1", True, "cuda:1")],
)
def test_the_device_is_auto_by_default_and_cuda_only_where_there_is_one(requested, cuda_available, device):
    assert resolve_device(requested, cuda_available) == device


@pytest.mark.parametrize("requested", ["gpu", "cuda:x", "", "cpu; rm -rf /"])
def test_an_unknown_device_is_a_load_error_naming_it(requested):
    with pytest.raises(MLServerError, match="unknown device"):
        resolve_device(requested, cuda_available=False)


def test_the_runtime_loads_on_the_device_its_settings_name_and_reports_it(minilm_dir):
    async def scenario():
        settings = ModelSettings(
            name="device-test",
            implementation=SentenceTransformerRuntime,
            parameters=ModelParameters(uri=str(minilm_dir), extra={"revision": "r1", "device": "cpu"}),
        )
        runtime = SentenceTransformerRuntime(settings)
        await runtime.load()
        return (await runtime.metadata()).parameters.device

    assert asyncio.run(scenario()) == "cpu"


def embed(uri: str, texts: list[str]) -> np.ndarray:
    async def scenario():
        runtime = make_runtime(uri)
        await runtime.load()
        response = await runtime.predict(request(texts))
        await runtime.unload()
        return response.outputs[0]

    output = asyncio.run(scenario())
    return np.asarray(output.data, dtype=np.float32).reshape(output.shape)


def test_a_tiny_model_is_small_real_and_the_same_from_the_same_seed(tiny_model_dir, tmp_path):
    again = build_tiny_model(tmp_path / "again")
    other = build_tiny_model(tmp_path / "other", seed=1)
    assert folder_size(tiny_model_dir) < 3_000_000
    texts = ["a tiny model", "still a real one"]
    vectors = embed(str(tiny_model_dir), texts)
    assert vectors.shape == (2, TINY_DIMENSIONS) and np.isfinite(vectors).all()
    assert np.array_equal(embed(str(again), texts), vectors)
    assert not np.allclose(embed(str(other), texts), vectors)


def test_the_runtime_reports_the_bytes_its_model_holds_in_its_metadata_and_each_answer(tiny_model_dir):
    async def scenario():
        runtime = make_runtime(str(tiny_model_dir))
        await runtime.load()
        tensors = [*runtime._model.parameters(), *runtime._model.buffers()]
        held = sum(tensor.numel() * tensor.element_size() for tensor in tensors)
        in_metadata = (await runtime.metadata()).parameters.memory_bytes
        in_answer = (await runtime.predict(request(["how much"]))).parameters.memory_bytes
        return held, in_metadata, in_answer

    held, in_metadata, in_answer = asyncio.run(scenario())
    assert in_metadata == in_answer == held > 4_000_000  # about a million float32 parameters
