from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from deployments import selectors
from deployments.inference import ArtifactsDamaged, InvalidModelId, SourceRefused, validate_model_id
from deployments.management.commands._operators import actor_of, bad_arguments, format_table
from deployments.services.registry import check_source, find_sentence_transformers_models, register_many


class Command(BaseCommand):
    help = (
        "Scan a directory for sentence-transformers models (folders with modules.json) and register each, "
        "named after its folder, once its artifacts are checked (a truncated or unparsable file, a missing "
        "tokenizer or weights file: nothing is registered, each problem is named). "
        "Models already registered are left as they are. The directory must lie in "
        "ALLOWED_SOURCE_ROOTS. Example: manage.py register_models var/sources"
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("directory", type=Path)
        parser.add_argument("--dry-run", action="store_true", help="List what would be registered; register nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        root: Path = options["directory"].expanduser().resolve()
        if not root.is_dir():
            raise bad_arguments(f"{options['directory']} is not a directory")
        try:
            check_source(str(root), artifacts=False)
        except SourceRefused as exc:
            raise bad_arguments(str(exc)) from exc
        found = find_sentence_transformers_models(root)
        if not found:
            raise bad_arguments(f"no sentence-transformers model (a folder with modules.json) under {root}")
        # Check every candidate before registering any: all or nothing.
        seen: dict[str, Path] = {}
        problems: list[str] = []
        for model in found:
            if model.embedding_model_id in seen:
                raise bad_arguments(
                    f"{seen[model.embedding_model_id]} and {model.path} would both be {model.embedding_model_id!r}; "
                    "rename one folder"
                )
            seen[model.embedding_model_id] = model.path
            try:
                validate_model_id(model.embedding_model_id)
                check_source(str(model.path))
            except ArtifactsDamaged as exc:
                problems.extend(exc.problems)  # each names its folder and file
            except (InvalidModelId, SourceRefused) as exc:
                problems.append(f"{model.path}: {exc}")
        if problems:
            # Every bad folder at once, so one pass of fixing is enough.
            raise bad_arguments(f"nothing registered: {'; '.join(problems)}")
        registered = set(selectors.embedding_model_ids())
        new = [model for model in found if model.embedding_model_id not in registered]
        rows = [
            (
                model.embedding_model_id,
                model.dimensions,
                model.path,
                "already registered" if model.embedding_model_id in registered else "new",
            )
            for model in found
        ]
        self.stdout.write(format_table(["model", "dim", "source", "status"], rows, max_width=100))
        if options["dry_run"]:
            self.stdout.write(f"Dry run: would register {len(new)} model(s).")
            return
        register_many(new, by=actor_of(self))
        self.stdout.write(f"Registered {len(new)} model(s); {len(found) - len(new)} already registered.")
