from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from deployments import selectors
from deployments.management.commands._operators import (
    bad_arguments,
    check_choices,
    comma_separated,
    format_table,
    kinds_option,
    parse_duration,
    took,
)
from deployments.models import TaskStatus
from deployments.task_ids import InvalidTaskId, validate_task_id


class Command(BaseCommand):
    help = (
        "A table of recent tasks, newest first, for a terminal. "
        "Example: manage.py tasks --status failed,refused --since 24h --limit 50; "
        "manage.py tasks --task 3357e86d; manage.py tasks --model minilm"
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--kind", action="append", help="deployment or deletion (default both).")
        parser.add_argument("--status", action="append", help="Statuses, comma-separated or repeated.")
        parser.add_argument("--task", help="Only tasks whose id starts with this (the 8 characters shown suffice).")
        parser.add_argument("--model", help="Only tasks of the models whose id contains this.")
        parser.add_argument("--since", help="Only tasks created within this long, e.g. 2h.")
        parser.add_argument("--limit", type=int, default=20, help="How many rows (default 20).")

    def handle(self, *args: Any, **options: Any) -> None:
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
        self.write_drifts()
        if not tasks:
            self.stdout.write("No task matches.")
            return
        rows = [
            (
                task.created_at.strftime("%Y-%m-%d %H:%M:%S"),
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
        headers = ["created (UTC)", "kind", "task", "model", "status", "try", "took", "detail"]
        self.stdout.write(format_table(headers, rows, max_width=60))

    def write_drifts(self) -> None:
        """Models the server does not serve as the registry says: first, since they matter most."""
        drifts = list(selectors.open_drifts())
        if not drifts:
            return
        rows = [
            (drift.embedding_model_id, drift.detected_at.strftime("%Y-%m-%d %H:%M:%S"), drift.detail, drift.action)
            for drift in drifts
        ]
        self.stdout.write(f"Drift: {len(drifts)} model(s) not served as the registry says")
        self.stdout.write(format_table(["model", "since (UTC)", "seen", "done"], rows, max_width=60))
        self.stdout.write("")
