import signal
import socket

from django.core.management.base import BaseCommand, CommandError, CommandParser

from deployments.services.health import cluster_on_host_is_proven
from deployments.services.watchdog import ClusterSupervisor
from deployments.services.workers import watchdog_bound


class Command(BaseCommand):
    help = (
        "Run the django-q2 workers (manage.py qcluster) under a watchdog: a canary job proves every few seconds "
        "that the cluster still runs jobs; a cluster that stops running them is killed and started again. "
        "SIGTERM or SIGINT stops the cluster and exits 0. With --check: exit 0 if a cluster on this host "
        "proved it runs jobs within the watchdog's bound, 1 otherwise (a liveness probe)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--check", action="store_true", help="Only check this host's cluster, as a probe.")

    def handle(self, *args: object, check: bool, **options: object) -> None:
        bound = watchdog_bound().total_seconds()
        if check:
            if not cluster_on_host_is_proven(socket.gethostname()):
                raise CommandError(f"no cluster on this host ran a canary in the last {bound:.0f} s", returncode=1)
            self.stdout.write("ok")
            return
        supervisor = ClusterSupervisor()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, supervisor.request_stop)
        self.stdout.write(f"run_workers: a wedged cluster is restarted within {bound:.0f} s")
        supervisor.run()
