import socket
import threading
import time

import pytest

from deployments.inference import ModelNotFound, ServerUnavailable, V2Client
from deployments.inference.server import free_port


def test_a_server_that_is_down_is_a_clear_error_not_a_hang():
    client = V2Client(f"http://127.0.0.1:{free_port()}", timeout=2)
    started = time.monotonic()
    with pytest.raises(ServerUnavailable, match="unreachable"):
        client.load("anything")
    assert time.monotonic() - started < 2
    assert client.server_ready() is False and client.server_live() is False


@pytest.fixture
def silent_server():
    """A listener that accepts connections and never replies: the fault a hung server produces."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def test_a_server_that_never_answers_times_out(silent_server):
    client = V2Client(silent_server, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(ServerUnavailable, match="did not answer"):
        client.infer("anything", ["text"])
    assert time.monotonic() - started < 3


def test_a_load_waits_no_longer_than_the_timeout_it_is_given(silent_server):
    client = V2Client(silent_server, timeout=0.5, load_timeout=300)
    started = time.monotonic()
    with pytest.raises(ServerUnavailable):
        client.load("anything", timeout=0.5)  # a deploy's ready_timeout, not the client's 300 s
    assert time.monotonic() - started < 3


@pytest.mark.mlserver
def test_a_live_server_reports_ready(v2_client):
    assert v2_client.server_ready() is True and v2_client.server_live() is True
    assert isinstance(v2_client.index(), list)


@pytest.mark.mlserver
def test_loading_a_model_the_repository_lacks_is_model_not_found(v2_client):
    with pytest.raises(ModelNotFound, match="no-such-model"):
        v2_client.load("no-such-model")


@pytest.mark.mlserver
def test_inference_on_a_model_that_is_not_loaded_is_model_not_found(v2_client):
    with pytest.raises(ModelNotFound, match="no-such-model"):
        v2_client.infer("no-such-model", ["hello"])


@pytest.mark.mlserver
def test_unloading_a_model_that_is_not_loaded_says_so(v2_client):
    assert v2_client.unload("no-such-model") is False
