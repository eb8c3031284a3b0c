from django.core.management.base import BaseCommand

from deployments.services import sweep_tasks


class Command(BaseCommand):
    help = (
        "Resolve tasks whose worker died (lease expired: retry as a new attempt, or fail with the reason) "
        "and re-send pending tasks whose hand-off to the queue was lost. Also runs every minute in the qcluster."
    )

    def handle(self, *args: object, **options: object) -> None:
        report = sweep_tasks()
        self.stdout.write(str(report))
        for task_id in report.failed:
            self.stdout.write(f"  lost attempt resolved: {task_id}")
        for task_id in report.retried:
            self.stdout.write(f"  retried as: {task_id}")
        for task_id in report.resent:
            self.stdout.write(f"  re-sent: {task_id}")
