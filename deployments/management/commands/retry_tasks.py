from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from deployments import selectors
from deployments.management.commands._operators import (
    TASKS_NOT_DONE,
    actor_of,
    bad_arguments,
    check_choices,
    comma_separated,
    format_table,
    kinds_option,
    parse_duration,
)
from deployments.services.bulk import retry_many
from deployments.services.tasks import RETRYABLE_STATUSES


class Command(BaseCommand):
    help = (
        "Retry failed, refused or canceled tasks as new attempts linked to them, by the same rule as "
        "POST .../retry and the admin, chosen by status, kind, model and age. Tasks already retried are left "
        "alone. Exit 1 if the task queue refused new attempts (they stay pending and are sent again). "
        "Example: manage.py retry_tasks --status failed --kind deployment --newer-than 24h"
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--status",
            action="append",
            help=f"Statuses to retry, comma-separated or repeated: {', '.join(RETRYABLE_STATUSES)} (default failed).",
        )
        parser.add_argument("--kind", action="append", help="deployment or deletion (default both).")
        parser.add_argument("--model", help="Only this embedding model's tasks.")
        parser.add_argument("--newer-than", help="Only tasks created within this long, e.g. 24h.")
        parser.add_argument("--older-than", help="Only tasks created at least this long ago, e.g. 30m.")
        parser.add_argument("--limit", type=int, default=1000, help="Refuse (exit 2) if more tasks match (1000).")
        parser.add_argument("--dry-run", action="store_true", help="List what would be retried; retry nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        statuses = check_choices(comma_separated(options["status"]) or ["failed"], RETRYABLE_STATUSES, "--status")
        kinds = kinds_option(comma_separated(options["kind"]))
        now = timezone.now()
        newer = parse_duration(options["newer_than"], "--newer-than") if options["newer_than"] else None
        older = parse_duration(options["older_than"], "--older-than") if options["older_than"] else None
        matching = selectors.filter_tasks(
            kinds=kinds,
            statuses=statuses,
            embedding_model_id=options["model"],
            created_after=now - newer if newer else None,
            created_before=now - older if older else None,
        )
        tasks = list(selectors.latest_attempts(matching).order_by("created_at")[: options["limit"] + 1])
        if len(tasks) > options["limit"]:
            limit = options["limit"]
            raise bad_arguments(f"more than --limit {limit} tasks match; narrow the filters or raise --limit")
        if not tasks:
            self.stdout.write("No task matches; nothing to retry.")
            return
        if options["dry_run"]:
            rows = [(t.kind, t.pk, t.embedding_model_id, t.status, t.created_at, t.detail) for t in tasks]
            self.stdout.write(format_table(["kind", "task", "model", "status", "created", "detail"], rows))
            self.stdout.write(f"Dry run: would retry {len(tasks)} task(s).")
            return
        outcome = retry_many(tasks, requested_by=actor_of(self))
        rows = [
            (
                v.task.kind,
                v.task.pk,
                v.task.embedding_model_id,
                v.task.status,
                v.result and v.result.pk,
                v.reason or v.note,
            )
            for v in outcome.verdicts
        ]
        self.stdout.write(format_table(["kind", "task", "model", "was", "retried as", "why not / note"], rows))
        self.stdout.write(f"Retried {len(outcome.acted)} task(s); {len(outcome.skipped)} not retried.")
        if waiting := [verdict for verdict in outcome.acted if verdict.note]:
            message = f"{len(waiting)} new attempt(s) wait for the sweeper: the task queue refused them (see note)"
            raise CommandError(message, returncode=TASKS_NOT_DONE)
