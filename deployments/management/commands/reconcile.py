import logging
import time

from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections

from deployments.services.reconciler import InferenceServerDown, reconcile_models

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Keep what the inference server serves equal to what the registry says is live: compare every "
        "deployed model's live revision with the revision the server answers from, reload what differs "
        "(under the model's lease, never racing a task) and record the drift. "
        "Example: manage.py reconcile --every 5"
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--every", type=float, default=0, metavar="SECONDS", help="Run again this often, until stopped."
        )

    def handle(self, *args: object, every: float, **options: object) -> None:
        while True:
            try:
                report = reconcile_models()
                if report.changed or not every:
                    self.stdout.write(f"reconcile: {report}")
            except InferenceServerDown as exc:
                self.stdout.write(f"reconcile: {exc}")
            except Exception:  # a database or network hiccup must not end the loop
                logger.exception("reconcile pass failed")
            if not every:
                return
            close_old_connections()
            time.sleep(every)
