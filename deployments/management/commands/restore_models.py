from django.core.management.base import BaseCommand, CommandError, CommandParser

from deployments.services.reconciler import InferenceServerDown, reconcile_models


class Command(BaseCommand):
    help = (
        "Make the inference server serve every deployed model's live revision again (after it restarted, "
        "it serves nothing): one pass of the reconciler. Models already served are left alone. "
        "Exit 1 if any model could not be restored."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--wait-for-server", type=float, default=0, metavar="SECONDS", help="Wait this long for the server."
        )

    def handle(self, *args: object, wait_for_server: float, **options: object) -> None:
        try:
            report = reconcile_models(wait_for_server=wait_for_server)
        except InferenceServerDown as exc:
            raise CommandError(str(exc), returncode=1) from exc
        self.stdout.write(str(report))
        for model_id in report.restored:
            self.stdout.write(f"  restored: {model_id}")
        for model_id in report.not_live:
            self.stdout.write(f"  not live (registry corrected): {model_id}")
        for model_id in report.busy:
            self.stdout.write(f"  busy (a task holds it): {model_id}")
        for model_id, reason in report.failed.items():
            self.stderr.write(f"  failed: {model_id}: {reason}")
        if report.failed:
            raise CommandError(f"{len(report.failed)} model(s) could not be restored", returncode=1)
