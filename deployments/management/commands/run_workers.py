import signal

from django.core.management.base import BaseCommand

from deployments.services.watchdog import ClusterSupervisor
from deployments.services.workers import watchdog_bound


class Command(BaseCommand):
    help = (
        "Run the django-q2 workers (manage.py qcluster) under a watchdog: a canary job proves every few seconds "
        "that the cluster still runs jobs; a cluster that stops running them is killed and started again. "
        "SIGTERM or SIGINT stops the cluster and exits 0."
    )

    def handle(self, *args: object, **options: object) -> None:
        supervisor = ClusterSupervisor()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, supervisor.request_stop)
        self.stdout.write(f"run_workers: a wedged cluster is restarted within {watchdog_bound().total_seconds():.0f} s")
        supervisor.run()
