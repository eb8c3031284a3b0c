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
    assert client.server_ready() is False


def test_a_server_that_never_answers_times_out():
    # A listener that accepts connections and never replies: the fault a hung server produces.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
    thread.start()
    try:
        client = V2Client(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.5)
        started = time.monotonic()
        with pytest.raises(ServerUnavailable, match="did not answer"):
            client.infer("anything", ["text"])
        assert time.monotonic() - started < 3
    finally:
        listener.close()


@pytest.mark.mlserver
def test_a_live_server_reports_ready(v2_client):
    assert v2_client.server_ready() is True
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
