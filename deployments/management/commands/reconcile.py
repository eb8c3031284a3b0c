import logging
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections

from deployments.services.reconciler import InferenceServerDown, ReconcileReport, reconcile_models

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Keep what the inference server serves equal to what the registry says is live: compare every "
        "deployed model's live revision with the revision the server answers from, reload what differs "
        "(under the model's lease, never racing a task) and record the drift. Once, or --every SECONDS "
        "until stopped. Run once, exit 1 if a model could not be restored or the server is down. "
        "Example: manage.py reconcile --every 5"
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--every", type=float, default=0, metavar="SECONDS", help="Run again this often, until stopped."
        )
        parser.add_argument(
            "--wait-for-server", type=float, default=0, metavar="SECONDS", help="Wait this long for the server."
        )

    def handle(self, *args: Any, every: float, wait_for_server: float, **options: Any) -> None:
        if not every:
            try:
                report = reconcile_models(wait_for_server=wait_for_server)
            except InferenceServerDown as exc:
                raise CommandError(str(exc), returncode=1) from exc
            self.write_report(report)
            if report.failed:
                raise CommandError(f"{len(report.failed)} model(s) could not be restored", returncode=1)
            return
        while True:
            try:
                report = reconcile_models(wait_for_server=wait_for_server)
                if report.changed:
                    self.write_report(report)
            except InferenceServerDown as exc:
                self.stdout.write(str(exc))
            except Exception:  # a database or network hiccup must not end the loop
                logger.exception("reconcile pass failed")
            close_old_connections()
            time.sleep(every)

    def write_report(self, report: ReconcileReport) -> None:
        self.stdout.write(str(report))
        for model_id in report.restored:
            self.stdout.write(f"  restored: {model_id}")
        for model_id in report.not_live:
            self.stdout.write(f"  not live (registry corrected): {model_id}")
        for model_id in report.busy:
            self.stdout.write(f"  busy (a task holds it): {model_id}")
        for model_id, reason in report.failed.items():
            self.stderr.write(f"  failed: {model_id}: {reason}")
