from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from deployments.management.commands._operators import bad_arguments, comma_separated, kinds_option, parse_duration
from deployments.services.bulk import prune_tasks


class Command(BaseCommand):
    help = (
        "Delete old finished tasks and their timelines. Pending and processing tasks, and the latest task of "
        "each model and kind (what /deploy-status answers with), are always kept. "
        "Example: manage.py prune_tasks --older-than 90d --keep-latest 10"
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", help="Only tasks created at least this long ago, e.g. 90d.")
        parser.add_argument("--keep-latest", type=int, help="Keep this many newest tasks per model and kind.")
        parser.add_argument("--kind", action="append", help="deployment or deletion (default both).")
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted; delete nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["older_than"] is None and options["keep_latest"] is None:
            raise bad_arguments("say what to prune: --older-than, --keep-latest, or both")
        if options["keep_latest"] is not None and options["keep_latest"] < 1:
            raise bad_arguments("--keep-latest must be at least 1: the latest task of a model is always kept")
        kinds = kinds_option(comma_separated(options["kind"]))
        older_than = parse_duration(options["older_than"], "--older-than") if options["older_than"] else None
        report = prune_tasks(
            kinds,
            older_than=timezone.now() - older_than if older_than else None,
            keep_latest=options["keep_latest"] or 1,
            dry_run=options["dry_run"],
        )
        counts = " and ".join(f"{count} {kind} task(s)" for kind, count in report.deleted.items())
        verb = "Would delete" if report.dry_run else "Deleted"
        self.stdout.write(f"{verb} {counts} (with their timelines).")
