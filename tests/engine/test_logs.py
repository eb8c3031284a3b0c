"""LOG_FORMAT=json: a real worker writes one JSON object per line, and the lines about a task name it."""

from __future__ import annotations

import json
import logging

import pytest
from django_q.tasks import async_task

from deployments import services
from deployments.log_context import TaskContextFilter, task_log_context
from deployments.log_routine import CANARY_JOB
from deployments.models import TaskStatus
from deployments.services.leases import LeaseHeartbeat, claim_model_lease
from tests.support.factories import EmbeddingModelFactory
from tests.support.processes import wait_for, wait_for_status


@pytest.mark.django_db(transaction=True)
def test_a_worker_logging_json_names_the_task_on_every_line_about_it(settings, qcluster):
    # The deployer raises inside a stage, so the engine logs the failure while the task runs.
    settings.INFERENCE_DEPLOYER_FACTORY = "tests.support.probes.build_exploding_deployer"
    model = EmbeddingModelFactory()
    cluster = qcluster(LOG_FORMAT="json")
    task = services.submit_deployment(model.id).task
    wait_for_status(task, {TaskStatus.FAILED}, 60, cluster)
    cluster.stop()

    lines = [line for line in cluster.log_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line, django-q2's own included, is one JSON object
    assert {"time", "level", "logger", "message"} <= set(records[0])
    about_the_task = [record for record in records if "failed unexpectedly" in record["message"]]
    assert about_the_task, lines
    for record in about_the_task:
        assert (record["task_id"], record["embedding_model_id"], record["attempt"]) == (task.pk, model.id, 1)
        assert record["level"] == "ERROR" and "deployer crashed" in record["exc_info"]
    # Lines logged outside a task carry no task fields.
    assert any("task_id" not in record for record in records)


def test_the_task_fields_are_set_only_within_the_context():
    record = logging.LogRecord("deployments", logging.INFO, __file__, 1, "hello", None, None)
    outside = logging.LogRecord("deployments", logging.INFO, __file__, 1, "hello", None, None)
    task_filter = TaskContextFilter()

    with task_log_context("1234", "minilm", 2):
        assert task_filter.filter(record)
    assert task_filter.filter(outside)

    assert (record.task_id, record.embedding_model_id, record.attempt) == ("1234", "minilm", 2)
    assert not hasattr(outside, "task_id")


@pytest.mark.django_db(transaction=True)
def test_the_lease_heartbeat_thread_logs_under_its_task(settings, caplog):
    settings.TASK_LEASE_SECONDS = 0.2
    claim_model_lease("m", "someone-else")  # the heartbeat's renewals fail: it logs that the lease is lost

    with task_log_context("1234", "m", 3), LeaseHeartbeat("m", "me") as heartbeat:
        wait_for(heartbeat.lost.is_set, 10, "the heartbeat to find its lease lost")

    lost = [record for record in caplog.records if "lost by me" in record.getMessage()]
    assert lost and (lost[0].task_id, lost[0].embedding_model_id, lost[0].attempt) == ("1234", "m", 3)


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        first_word = record.getMessage().split(" ")[0]
        if first_word in {"Enqueued", "Processed", "Failed"}:  # not django-q2's own DEBUG lines
            self.lines.append((record.levelname, first_word))


@pytest.mark.django_db
@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG])
def test_django_q_lines_about_routine_jobs_are_debug_and_their_failures_stay_errors(level):
    queue_logger = logging.getLogger("django-q")
    configured = queue_logger.level
    queue_logger.setLevel(level)
    collect = Collect()
    queue_logger.addHandler(collect)
    try:
        async_task(CANARY_JOB, "cluster", save=False)  # "Enqueued [queue] <id>": routine
        async_task("deployments.jobs.run_task", "1234")  # a deploy's hand-off: not routine
        queue_logger.info(f"Processed '{CANARY_JOB}' (canary-1-ab)")
        queue_logger.error(f"Failed '{CANARY_JOB}' (canary-1-ab) - boom")
    finally:
        queue_logger.removeHandler(collect)
        queue_logger.setLevel(configured)

    routine = [("DEBUG", "Enqueued"), ("DEBUG", "Processed")]
    expected = [("INFO", "Enqueued"), ("ERROR", "Failed")]
    if level == logging.DEBUG:
        expected = [routine[0], ("INFO", "Enqueued"), routine[1], ("ERROR", "Failed")]
    assert collect.lines == expected
