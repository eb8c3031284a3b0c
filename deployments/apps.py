from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _install_sweep_schedule(sender: AppConfig, **kwargs: object) -> None:
    from deployments.services import ensure_sweep_schedule

    ensure_sweep_schedule()


class DeploymentsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "deployments"
    verbose_name = "Deployments"

    def ready(self) -> None:
        from django_q.signals import pre_enqueue

        from deployments import checks  # noqa: F401  (registers the system checks)
        from deployments.log_routine import note_enqueued_job

        # The sweeper runs on a django-q2 schedule; (re)create it whenever the database is migrated.
        post_migrate.connect(_install_sweep_schedule, sender=self, dispatch_uid="deployments-sweep-schedule")
        # So django-q2's "Enqueued" line of a routine job is logged at DEBUG, as its other lines are.
        pre_enqueue.connect(note_enqueued_job, dispatch_uid="deployments-routine-jobs")
