"""What every fault drill needs: a live model with its next source, traffic on blue while the fault
happens, the held worker, and the three facts each drill asserts at the end (every task terminal, served
equals registered, blue answered with no failed request)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django_q.models import Task as QueueResult

from deployments import services
from deployments.inference import InferenceError, V2Client, served_name
from deployments.models import TERMINAL_STATUSES, EmbeddingModel, Task, TaskStatus
from tests.support.factories import EmbeddingModelFactory
from tests.support.processes import wait_for


class BlueTraffic:
    """Requests to a model's URL (through the router) from a background thread, counting the ones that failed."""

    def __init__(self, server_url: str, model_id: str):
        self.server_url = server_url
        self.model_id = model_id
        self.sent = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BlueTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with V2Client(self.server_url, timeout=30) as client:
            while not self._stop.is_set():
                self.sent += 1
                try:
                    client.infer(self.model_id, ["drill traffic"])
                except InferenceError as exc:
                    self.failures.append(str(exc))
                self._stop.wait(0.02)


def live_model(model_id: str, minilm_dir: Path, sources_root: Path) -> Task:
    """A model with blue deployed, and a second source (a new revision of the same weights) registered."""
    EmbeddingModelFactory(id=model_id, source=str(minilm_dir))
    blue = services.submit_deployment(model_id).task
    assert services.run_task(blue.pk) == TaskStatus.DONE
    green_source = sources_root / model_id
    shutil.copytree(minilm_dir, green_source)
    (green_source / "RELEASE_NOTES.txt").write_text(f"{model_id}: the next revision")
    EmbeddingModel.objects.filter(pk=model_id).update(source=str(green_source))
    return Task.objects.get(pk=blue.pk)


def held_worker_pid(hold_file: Path, timeout: float = 120) -> int:
    """The pid of the worker the fault hook holds (it writes its pid into the hold file)."""
    wait_for(lambda: hold_file.exists() and hold_file.read_text().strip(), timeout, f"a worker to hold at {hold_file}")
    return int(hold_file.read_text())


def assert_settled(embedding_model_id: str) -> None:
    """Every task of the model ended; the router serves exactly what the registry says is live, and every
    replica has that revision ready and no other revision of the model."""
    unfinished = Task.objects.filter(embedding_model_id=embedding_model_id).exclude(status__in=TERMINAL_STATUSES)
    assert not unfinished.exists(), list(unfinished.values("pk", "status", "detail"))
    model = EmbeddingModel.objects.get(pk=embedding_model_id)
    with V2Client(settings.INFERENCE_SERVER_URL) as front:
        metadata = front.model_metadata(embedding_model_id)
    served = (metadata or {}).get("parameters", {}).get("revision")
    assert served == (model.live_revision or None), (served, model.live_revision)
    expected = {served_name(embedding_model_id, model.live_revision)} if model.live_revision else set()
    for url in settings.INFERENCE_REPLICA_URLS:
        with V2Client(url) as replica:
            ready = {e["name"] for e in replica.index() if e.get("state") == "READY"}
        assert {name for name in ready if name.startswith(f"{embedding_model_id}~")} == expected, url


def wait_for_superseded_attempt_to_stop(task: Task, timeout: float, on_timeout: Callable[[], str] = str) -> None:
    """Wait until a woken worker's attempt returned from its job, saying it was superseded."""

    def returned() -> bool:
        result = QueueResult.objects.filter(name=f"{task.kind}-{task.pk}").order_by("-stopped").first()
        return result is not None and str(result.result).startswith("superseded")

    wait_for(returned, timeout, "the woken worker's attempt to stop", on_timeout)
