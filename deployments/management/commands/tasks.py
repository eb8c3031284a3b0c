import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from deployments import selectors
from deployments.clock import format_time
from deployments.management.commands._operators import (
    bad_arguments,
    check_choices,
    comma_separated,
    format_table,
    kinds_option,
    parse_duration,
    took,
)
from deployments.models import Task, TaskStatus
from deployments.task_ids import InvalidTaskId, validate_task_id

# Cells longer than this are cut with an ellipsis unless --wide is given.
NARROW_CELL = 60


class Command(BaseCommand):
    help = (
        "A table of recent tasks, newest first, for a terminal; or one task in full when its id (or the first "
        "characters of it, as the admin shows them) is given. "
        "Examples: manage.py tasks --status failed,refused --since 24h --limit 50; manage.py tasks 3f2a9c1e; "
        "manage.py tasks --task 3357e86d; manage.py tasks --model minilm"
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "task_id", nargs="?", metavar="TASK_ID", help="Show this task in full (its id or its start)."
        )
        parser.add_argument("--kind", action="append", help="deployment or deletion (default both).")
        parser.add_argument("--status", action="append", help="Statuses, comma-separated or repeated.")
        parser.add_argument(
            "--task", help="Only tasks whose id starts with this (a generated id's first 8 characters suffice)."
        )
        parser.add_argument("--model", help="Only tasks of the models whose id contains this.")
        parser.add_argument("--since", help="Only tasks created within this long, e.g. 2h.")
        parser.add_argument("--limit", type=int, default=20, help="How many rows (default 20).")
        parser.add_argument("--wide", action="store_true", help="Show every cell whole (details are not cut).")

    def handle(self, *args: Any, **options: Any) -> None:
        width = None if options["wide"] else NARROW_CELL
        if options["task_id"]:
            filters = [f"--{name}" for name in ("kind", "status", "task", "model", "since") if options[name]]
            if filters:
                raise bad_arguments(f"TASK_ID shows one task; {', '.join(filters)} filter the table, not both")
            self.write_task(self.find(options["task_id"]), width)
            return
        statuses = check_choices(comma_separated(options["status"]), TaskStatus.values, "--status")
        since = parse_duration(options["since"], "--since") if options["since"] else None
        if options["task"]:
            try:
                validate_task_id(options["task"])  # the start of an id is held to the rule of a whole one
            except InvalidTaskId as exc:
                raise bad_arguments(f"--task: {exc}") from exc
        tasks = selectors.filter_tasks(
            kinds=kinds_option(comma_separated(options["kind"])),
            statuses=statuses,
            created_after=timezone.now() - since if since else None,
        )
        # The admin's search, by the same selector: the short ids both show, part of a model id. A pending
        # task's detail says why it waits, read with the rows (no query per row).
        tasks = selectors.search_tasks(tasks, task_id_prefix=options["task"], model_id_part=options["model"])
        tasks = selectors.with_waiting_reason(tasks)[: max(1, options["limit"])]
        self.write_drifts(width)
        if not tasks:
            self.stdout.write("No task matches.")
            return
        rows = [
            (
                task.created_at,
                task.kind,
                task.pk,
                task.embedding_model_id,
                task.status,
                task.attempt,
                took(task),
                selectors.task_detail(task),
            )
            for task in tasks
        ]
        headers = ["created", "kind", "task", "model", "status", "try", "took", "detail"]
        self.stdout.write(format_table(headers, rows, max_width=width))

    def find(self, task_id: str) -> Task:
        try:
            task = selectors.task_by_short_id(task_id)
        except selectors.AmbiguousShortId as exc:
            raise bad_arguments(f"{exc}; give more of the id") from exc
        if task is None:
            raise bad_arguments(f"no task has the id {task_id!r}, nor one beginning with it")
        return task

    def write_task(self, task: Task, width: int | None) -> None:
        """Everything the task holds: its facts, its config, its timeline, its attempts and its metadata."""
        facts = [
            ("task", task.pk),
            ("kind", task.kind),
            ("model", task.embedding_model_id),
            ("status", task.status),
            ("stage", task.stage or "—"),
            ("detail", selectors.task_detail(task) or "—"),
            ("attempt", task.attempt),
            ("requested by", task.requested_by or "—"),
            ("worker", task.lease_owner or "—"),
            ("created", format_time(task.created_at)),
            ("started", format_time(task.started_at)),
            ("finished", format_time(task.finished_at)),
            ("took", took(task) or "—"),
            ("config", json.dumps(task.config, sort_keys=True) if task.config else "none (defaults)"),
        ]
        label_width = max(len(label) for label, _ in facts)
        for label, value in facts:
            self.stdout.write(f"{label.ljust(label_width)}  {value}")
        events = list(selectors.task_events(task))
        self.stdout.write(f"\nTimeline ({len(events)} event(s))")
        if events:
            rows = [
                (
                    event.created_at,
                    event.stage,
                    event.state,
                    f"{event.duration_s:.2f}s" if event.duration_s is not None else "",
                    event.actor,
                    event.message,
                )
                for event in events
            ]
            self.stdout.write(format_table(["at", "stage", "state", "took", "by", "message"], rows, max_width=width))
        attempts = selectors.attempts_of(task)
        self.stdout.write(f"\nAttempts ({len(attempts)})")
        rows = [
            (
                attempt.attempt,
                f"{attempt.pk} (this one)" if attempt.pk == task.pk else attempt.pk,
                attempt.status,
                attempt.created_at,
                attempt.detail,
            )
            for attempt in attempts
        ]
        self.stdout.write(format_table(["try", "task", "status", "created", "detail"], rows, max_width=width))
        self.stdout.write("\nMetadata")
        self.stdout.write(json.dumps(task.metadata, indent=2, sort_keys=True, default=str))

    def write_drifts(self, width: int | None) -> None:
        """Models the server does not serve as the registry says: first, since they matter most."""
        drifts = list(selectors.open_drifts())
        if not drifts:
            return
        rows = [(drift.embedding_model_id, drift.detected_at, drift.detail, drift.action) for drift in drifts]
        self.stdout.write(f"Drift: {len(drifts)} model(s) not served as the registry says")
        self.stdout.write(format_table(["model", "since", "seen", "done"], rows, max_width=width))
        self.stdout.write("")
