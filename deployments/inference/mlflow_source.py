"""Models from an MLflow tracking server: ``models:/<name>/<version>``, ``models:/<name>@<alias>`` and
``runs:/<run_id>/<path>``.

Opening a source only parses its URI, so a request is checked without the network. ``resolve()``
asks the server what the URI points at *now* (an alias moves; the version it named is what gets
deployed and recorded); ``files()`` downloads with MLflow's own client into a scratch folder that
the repository then moves into the new revision. The artifacts are either a sentence-transformers
folder or an MLflow model whose ``sentence_transformers`` flavor holds one.

The server comes from the model's own tracking URI, else ``MLFLOW_TRACKING_URI``; credentials from
the variables MLflow itself reads (``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_USERNAME`` ...), so the
server, and where the registry says the artifacts are, must be allowed (allowed_servers.py) before
anything is asked of it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from .allowed_servers import check_artifact_location, check_tracking_server, credentials_removed, without_credentials
from .errors import InferenceError, InvalidArtifacts, SourceRefused, SourceUnavailable

if TYPE_CHECKING:
    from mlflow import MlflowClient

_MODEL_VERSION = re.compile(r"models:/(?P<name>[^/@]+)/(?P<version>[1-9][0-9]*)/?")
_MODEL_ALIAS = re.compile(r"models:/(?P<name>[^/@]+)@(?P<alias>[A-Za-z0-9_-]+)/?")
_RUN = re.compile(r"runs:/(?P<run_id>[0-9a-f]{32})(?:/(?P<path>[^\x00]*?))?/?")
RUN_ID = re.compile(r"[0-9a-f]{32}")

# MLflow answers these when the thing named does not exist: the request is at fault, not the server.
_NOT_FOUND_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND", "BAD_REQUEST"})


class MlflowSource:
    """A registered model version, an alias's current version, or a run's artifacts on an MLflow server."""

    # Its files are its own download: the repository moves them into the revision instead of copying.
    disposable = True

    def __init__(self, uri: str, tracking_uri: str | None = None):
        self.uri = uri
        self.tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        if not self.tracking_uri:
            raise SourceRefused(f"source {uri!r} needs an MLflow tracking server: set MLFLOW_TRACKING_URI")
        self.name: str | None = None
        self.version: str | None = None
        self.alias: str | None = None
        self.run_id: str | None = None
        self.path = ""
        if match := _MODEL_VERSION.fullmatch(uri):
            self.name, self.version = match["name"], match["version"]
        elif match := _MODEL_ALIAS.fullmatch(uri):
            self.name, self.alias = match["name"], match["alias"]
        elif match := _RUN.fullmatch(uri):
            self.run_id, self.path = match["run_id"], _artifact_path(match["path"], uri)
        else:
            raise SourceRefused(
                f"source {uri!r} must look like models:/<name>/<version>, models:/<name>@<alias> "
                "or runs:/<run_id>/<path>"
            )
        self.resolved: dict[str, str] = {}
        self._artifact_uri = ""

    # -- resolving ---------------------------------------------------------------------------

    def resolve(self) -> dict[str, str]:
        """Ask the server what the URI names now; SourceRefused if it names nothing, SourceUnavailable if the
        server does not answer. Returns (and keeps) what was resolved."""
        if self.resolved:
            return self.resolved
        client = _client(self.tracking_uri)
        with _mlflow_errors(self.uri, self.tracking_uri):
            if self.run_id is not None:
                run_id, path = self.run_id, self.path
                resolved: dict[str, str] = {}
            else:
                if self.alias is not None:
                    found = client.get_model_version_by_alias(self.name, self.alias)
                else:
                    found = client.get_model_version(self.name, self.version)
                resolved = {"registered_model": found.name, "version": str(found.version)}
                if self.alias is not None:
                    resolved["alias"] = self.alias  # and the version it pointed at, just above
                # The version's own artifacts: an alias moved during the download cannot mix two versions.
                download_uri = str(found.source or "")
                if not _RUN.fullmatch(download_uri):
                    download_uri = client.get_model_version_download_uri(found.name, found.version)
                run_match = _RUN.fullmatch(download_uri)
                if run_match is None:  # stored elsewhere than in a run (a logged model, a bucket): as MLflow says
                    run_id, path, artifact_uri = None, "", download_uri
                else:
                    run_id, path = run_match["run_id"], _artifact_path(run_match["path"], download_uri)
            if run_id is not None:
                # Where the run keeps its artifacts, asked once: listing and downloading then ask nothing more.
                run = client.get_run(run_id)
                resolved |= {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id}
                if path:
                    resolved["artifact_path"] = path
                artifact_uri = "/".join(part for part in (run.info.artifact_uri.rstrip("/"), path) if part)
            # Where the registry says the artifacts are is its data: checked before anything is read there.
            check_artifact_location(artifact_uri, self.tracking_uri, self.uri)
            # A run with no artifacts makes download_artifacts wait forever (mlflow#16467): look first.
            from mlflow.artifacts import list_artifacts

            if not list_artifacts(artifact_uri=artifact_uri, tracking_uri=self.tracking_uri):
                server = without_credentials(self.tracking_uri)
                raise SourceRefused(f"{self.uri} has no artifacts on {server} ({artifact_uri} is empty)")
        self._artifact_uri = artifact_uri
        # Kept in the task's metadata and on the revision, which readers of the API see: never a password.
        self.resolved = {**resolved, "tracking_uri": without_credentials(self.tracking_uri)}
        return self.resolved

    # -- fetching ----------------------------------------------------------------------------

    def files(self, scratch: Path | None = None) -> Iterator[tuple[Path, str]]:
        if scratch is None:
            raise SourceRefused(f"source {self.uri} downloads its artifacts: it needs a scratch folder")
        self.resolve()
        from mlflow.artifacts import download_artifacts

        scratch.mkdir(parents=True, exist_ok=True)
        with _mlflow_errors(self.uri, self.tracking_uri):
            downloaded = Path(
                download_artifacts(
                    artifact_uri=self._artifact_uri,
                    dst_path=str(scratch),
                    tracking_uri=self.tracking_uri,
                    registry_uri=self.tracking_uri,
                )
            )
        root = _sentence_transformers_folder(downloaded, self.uri)
        for path in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()):
            if path.is_symlink() or not path.resolve().is_relative_to(scratch.resolve()):
                raise InvalidArtifacts(
                    f"{self.uri}: artifact {path.relative_to(root)} is a link; artifacts must be files"
                )
            yield path, path.relative_to(root).as_posix()


def registered_versions(tracking_uri: str, name: str) -> list[str]:
    """Every version of the registered model ``name``, oldest first (SourceRefused if there is no such model)."""
    client = _client(tracking_uri)
    with _mlflow_errors(f"models:/{name}", tracking_uri):
        client.get_registered_model(name)  # an unknown name is refused, not an empty list
        versions = _all_pages(lambda token: client.search_model_versions(f"name = '{_quoted(name)}'", page_token=token))
    return sorted((str(v.version) for v in versions), key=int)


def models_with_alias(tracking_uri: str, alias: str) -> dict[str, str]:
    """Every registered model that carries ``alias``, and the version it names now."""
    client = _client(tracking_uri)
    with _mlflow_errors(f"models:/*@{alias}", tracking_uri):
        models = _all_pages(lambda token: client.search_registered_models(page_token=token))
    return {model.name: str(model.aliases[alias]) for model in models if alias in (model.aliases or {})}


def _artifact_path(path: str | None, uri: str) -> str:
    """A run's artifact path, which may not climb out of the run's artifacts (also when percent-encoded)."""
    path = (path or "").strip("/")
    if any(part in ("..", ".") for part in unquote(path).replace("\\", "/").split("/")):
        raise SourceRefused(f"source {uri!r}: the artifact path may not contain '.' or '..'")
    return path


def _client(tracking_uri: str) -> MlflowClient:
    """A client of ``tracking_uri``, once the operator allowed it: it is sent the environment's credentials."""
    check_tracking_server(tracking_uri)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _all_pages(search: Callable[[str | None], Any]) -> list[Any]:
    items: list[Any] = []
    token = None
    while True:
        page = search(token)
        items.extend(page)
        token = page.token
        if not token:
            return items


def _quoted(value: str) -> str:
    return value.replace("'", "\\'")


def mlflow_ui_url(resolved: dict[str, str]) -> str:
    """The MLflow UI's page of what a source resolved to ('' when the tracking URI is not a web server)."""
    base = resolved.get("tracking_uri", "")
    if not base.startswith(("http://", "https://")):
        return ""
    base = base.rstrip("/")
    if "registered_model" in resolved and "version" in resolved:
        return f"{base}/#/models/{quote(resolved['registered_model'])}/versions/{resolved['version']}"
    if "experiment_id" in resolved and "run_id" in resolved:
        return f"{base}/#/experiments/{resolved['experiment_id']}/runs/{resolved['run_id']}"
    return ""


def _sentence_transformers_folder(downloaded: Path, uri: str) -> Path:
    """The folder to deploy: the download itself, or an MLflow model's sentence-transformers data folder."""
    if not downloaded.is_dir():
        raise InvalidArtifacts(f"{uri} is a single file, not a sentence-transformers folder")
    mlmodel = downloaded / "MLmodel"
    if mlmodel.is_file():
        import yaml  # MLflow's own dependency, as the file is its own format

        try:
            flavors = yaml.safe_load(mlmodel.read_text()).get("flavors", {})
        except (yaml.YAMLError, AttributeError) as exc:
            raise InvalidArtifacts(f"{uri}: its MLmodel file does not parse: {exc}") from exc
        flavor = flavors.get("sentence_transformers")
        if not isinstance(flavor, dict):
            raise InvalidArtifacts(
                f"{uri} is an MLflow model with flavors {sorted(flavors)}, not sentence_transformers: "
                "log it with mlflow.sentence_transformers.log_model, or log the model's folder as artifacts"
            )
        data = downloaded / str(flavor.get("data", "model.sentence_transformer"))
        if not data.resolve().is_relative_to(downloaded.resolve()) or not data.is_dir():
            raise InvalidArtifacts(f"{uri}: its MLmodel names a data folder {flavor.get('data')!r} that is not there")
        return data
    if not any((downloaded / marker).is_file() for marker in ("modules.json", "config_sentence_transformers.json")):
        present = ", ".join(sorted(p.name for p in downloaded.iterdir())[:8]) or "nothing"
        raise InvalidArtifacts(
            f"{uri} is not a sentence-transformers folder (no modules.json or MLmodel; it holds {present}): "
            "log the folder that SentenceTransformer.save() wrote"
        )
    return downloaded


class _mlflow_errors:
    """Turn MLflow's exceptions into ours: a name that does not exist is refused, the rest is unavailable."""

    def __init__(self, uri: str, tracking_uri: str):
        self.uri, self.tracking_uri = uri, tracking_uri

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None or isinstance(exc, InferenceError):  # ours already
            return False
        from mlflow.exceptions import MlflowException

        if not isinstance(exc, MlflowException | OSError):
            return False
        code = getattr(exc, "error_code", "")
        # MLflow's own message names the URL it called, password and all: it goes into a task's detail.
        message = credentials_removed(getattr(exc, "message", None) or str(exc), self.tracking_uri)
        if code in _NOT_FOUND_CODES:
            raise SourceRefused(f"{self.uri}: MLflow says {message}") from exc
        server = without_credentials(self.tracking_uri)
        raise SourceUnavailable(f"{self.uri}: the MLflow tracking server {server} failed: {message}") from exc
