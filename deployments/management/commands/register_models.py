from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from deployments import selectors
from deployments.inference import SourceRefused, SourceUnavailable
from deployments.management.commands._operators import BAD_ARGUMENTS, actor_of, bad_arguments, format_table
from deployments.services.registry import (
    FoundModel,
    check_source,
    find_mlflow_models,
    find_sentence_transformers_models,
    problems_of,
    register_many,
)

# Some models were registered (or, in a dry run, would be) and the invalid ones skipped.
SKIPPED_INVALID = 1


class Command(BaseCommand):
    help = (
        "Register many models at once: every sentence-transformers folder (with modules.json) under a "
        "directory (inside ALLOWED_SOURCE_ROOTS), named after its folder; or every version of an MLflow "
        "registered model (--mlflow-model NAME: ids NAME-v1, NAME-v2 ...); or every MLflow model carrying "
        "an alias (--mlflow-alias champion: ids after the model names, each deploy taking the version the "
        "alias names then). Each source is checked first (a folder's artifacts: a truncated or unparsable "
        "file, a missing tokenizer or weights file), and every problem is named: with any, nothing is "
        "registered (exit 2), unless --skip-invalid registers the rest (exit 1 when any was skipped). "
        "Models already registered are left as they are. "
        "Examples: manage.py register_models var/sources; manage.py register_models --mlflow-alias champion --dry-run"
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("directory", type=Path, nargs="?", help="A directory inside ALLOWED_SOURCE_ROOTS.")
        parser.add_argument("--mlflow-model", metavar="NAME", help="Every version of this MLflow registered model.")
        parser.add_argument("--mlflow-alias", metavar="ALIAS", help="Every MLflow registered model with this alias.")
        parser.add_argument(
            "--tracking-uri",
            help="The MLflow tracking server (default MLFLOW_TRACKING_URI); given, it is kept on each model.",
        )
        parser.add_argument("--dry-run", action="store_true", help="List what would be registered; register nothing.")
        parser.add_argument(
            "--skip-invalid",
            action="store_true",
            help="Register the valid models and skip the invalid ones (each named; exit 1 when any is skipped).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        chosen = [name for name in ("directory", "mlflow_model", "mlflow_alias") if options[name]]
        if len(chosen) != 1:
            raise bad_arguments("name exactly one of: a directory, --mlflow-model NAME, --mlflow-alias ALIAS")
        if options["tracking_uri"] and options["directory"]:
            raise bad_arguments("--tracking-uri is for --mlflow-model and --mlflow-alias, not a directory")
        found = self._from_directory(options["directory"]) if options["directory"] else self._from_mlflow(options)
        problems = problems_of(found)
        invalid = [model for model, own in zip(found, problems, strict=True) if own]
        registered = set(selectors.embedding_model_ids())
        valid = [model for model, own in zip(found, problems, strict=True) if not own]
        new = [model for model in valid if model.embedding_model_id not in registered]
        rows = [
            (
                model.embedding_model_id,
                model.dimensions,
                model.source,
                "invalid" if own else "already registered" if model.embedding_model_id in registered else "new",
            )
            for model, own in zip(found, problems, strict=True)
        ]
        self.stdout.write(format_table(["model", "dim", "source", "status"], rows, max_width=100))
        for problem in (problem for own in problems for problem in own):
            self.stderr.write(f"invalid: {problem}")
        counts = f"{len(invalid)} of {len(found)} model(s) invalid (each problem above)"
        if invalid and not options["skip_invalid"]:
            # All or nothing unless told otherwise: a batch is registered whole, once every problem is fixed.
            raise CommandError(
                f"nothing registered: {counts}; fix them, or pass --skip-invalid to register the other "
                f"{len(new)} new model(s)",
                returncode=BAD_ARGUMENTS,
            )
        skipped = f"; {len(invalid)} skipped as invalid" if invalid else ""
        if options["dry_run"]:
            self.stdout.write(f"Dry run: would register {len(new)} model(s){skipped}.")
        else:
            register_many(new, by=actor_of(self))
            self.stdout.write(f"Registered {len(new)} model(s); {len(valid) - len(new)} already registered{skipped}.")
        if invalid:
            raise CommandError(f"{counts}: skipped", returncode=SKIPPED_INVALID)

    def _from_directory(self, directory: Path) -> list[FoundModel]:
        root = directory.expanduser().resolve()
        if not root.is_dir():
            raise bad_arguments(f"{directory} is not a directory")
        try:
            check_source(str(root), artifacts=False)  # a folder of models, not one
        except SourceRefused as exc:
            raise bad_arguments(str(exc)) from exc
        found = find_sentence_transformers_models(root)
        if not found:
            raise bad_arguments(f"no sentence-transformers model (a folder with modules.json) under {root}")
        return found

    def _from_mlflow(self, options: dict[str, Any]) -> list[FoundModel]:
        tracking_uri = options["tracking_uri"] or os.environ.get("MLFLOW_TRACKING_URI", "")
        if not tracking_uri:
            raise bad_arguments("no MLflow tracking server: set MLFLOW_TRACKING_URI or pass --tracking-uri")
        try:
            found = find_mlflow_models(
                tracking_uri,
                registered_model=options["mlflow_model"],
                alias=options["mlflow_alias"],
                own_server=bool(options["tracking_uri"]),
            )
        except (SourceRefused, SourceUnavailable) as exc:
            raise bad_arguments(str(exc)) from exc
        if not found:
            if options["mlflow_model"]:
                raise bad_arguments(f"{options['mlflow_model']} has no version on {tracking_uri}")
            raise bad_arguments(f"no registered model has the alias {options['mlflow_alias']!r} on {tracking_uri}")
        return found
