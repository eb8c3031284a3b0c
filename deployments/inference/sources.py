"""Where model artifacts come from. A source knows how to list and copy its files; nothing else.

Local directories (an absolute path or ``file://``), the local Hugging Face cache (``hf://``) and an
MLflow tracking server (``models:/``, ``runs:/``, in mlflow_source.py). Another registry (S3, ...) is
added by writing another ``ModelSource`` and registering its URI scheme in ``SOURCE_SCHEMES``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from huggingface_hub import constants as hf_constants
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

from .errors import SourceRefused, SourceUnavailable
from .integrity import check_artifacts

# Files a source may not bring into the repository: the server treats them as its own configuration.
RESERVED_FILE_NAMES = frozenset({"model-settings.json", "settings.json", "MANIFEST.sha256", "PROVENANCE.json"})


class ModelSource(Protocol):
    """A place model artifacts are copied from."""

    uri: str
    # What the URI pointed at when it was opened (a commit, a registry version): kept with the deploy,
    # because a branch or an alias can move later.
    resolved: dict[str, str]

    # True when the files are the source's own download, which the repository may move rather than copy.
    disposable: bool

    def resolve(self) -> dict[str, str]:
        """Find out what the URI points at now (a registry is asked here, not when the source is opened);
        raise SourceRefused if it points at nothing, SourceUnavailable if that cannot be told now."""
        ...

    def files(self, scratch: Path | None = None) -> Iterator[tuple[Path, str]]:
        """Yield (absolute file path, path relative to the model root) for every file to copy.

        ``scratch`` is an empty folder on the repository's file system that a source which downloads
        may fill; the caller removes it afterwards.
        """
        ...


class LocalDirectorySource:
    """A directory on this machine, which must lie (after resolving symlinks) inside an allowed root."""

    def __init__(self, path: Path, allowed_roots: Sequence[Path]):
        self.uri = path.as_uri() if path.is_absolute() else str(path)
        self.allowed_roots = list(allowed_roots)
        self.root = _confine(path, self.allowed_roots)
        self.resolved: dict[str, str] = {}
        self.disposable = False
        if not self.root.is_dir():
            raise SourceRefused(f"source {path} is not a directory")

    def resolve(self) -> dict[str, str]:
        return self.resolved

    def files(self, scratch: Path | None = None) -> Iterator[tuple[Path, str]]:
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            dirnames.sort()
            base = Path(dirpath)
            # os.walk does not descend into symlinked directories: refuse them rather than
            # deploy a model with files silently missing (and they may loop).
            for name in dirnames:
                if (base / name).is_symlink():
                    _confine(base / name, self.allowed_roots)
                    raise SourceRefused(f"source {self.uri} contains a symlinked directory: {name}")
            for name in sorted(filenames):
                path = base / name
                if path.is_symlink():
                    # Symlinked files (e.g. a Hugging Face cache) are fine while they stay inside the roots.
                    _confine(path, self.allowed_roots)
                if name in RESERVED_FILE_NAMES:
                    continue
                yield path, path.relative_to(self.root).as_posix()


def _confine(path: Path, allowed_roots: Sequence[Path]) -> Path:
    """Resolve ``path`` (following every symlink and '..') and require it to lie inside an allowed root."""
    if not allowed_roots:
        raise SourceRefused("no source roots are allowed: configure at least one")
    if "\x00" in str(path):
        raise SourceRefused("source path contains a NUL character")
    try:
        resolved = path.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise SourceRefused(f"source {path} does not exist") from None
    except (OSError, RuntimeError) as exc:  # symlink loops, permission errors
        raise SourceRefused(f"source {path} cannot be resolved: {exc}") from None
    for root in allowed_roots:
        root_resolved = Path(root).resolve()
        if resolved == root_resolved or resolved.is_relative_to(root_resolved):
            return resolved
    roots = ", ".join(str(r) for r in allowed_roots)
    raise SourceRefused(f"source {path} resolves to {resolved}, outside the allowed roots ({roots})")


def _local_source(uri: str, allowed_roots: Sequence[Path], tracking_uri: str | None) -> ModelSource:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise SourceRefused(f"file URI {uri!r} names a remote host")
        path = Path(unquote(parsed.path))
    else:
        path = Path(uri)
    if not path.is_absolute():
        raise SourceRefused(f"source path {uri!r} must be absolute")
    return LocalDirectorySource(path, allowed_roots)


# hf://<org>/<repo>@<revision>: a repo id as the Hub spells it, a branch, tag or commit.
_HF_URI = re.compile(r"hf://(?P<repo>[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)?)(?:@(?P<revision>[\w.-]+))?")


class HuggingFaceCacheSource:
    """A snapshot of a Hugging Face repo in the local cache (``HF_HUB_CACHE`` / ``HF_HOME``), resolved
    offline to the immutable ``snapshots/<commit>`` folder; no network is ever used."""

    def __init__(self, uri: str, cache_dir: Path | None = None):
        match = _HF_URI.fullmatch(uri)
        if match is None:
            raise SourceRefused(f"source {uri!r} must look like hf://<org>/<repo>@<revision>")
        repo_id, revision = match["repo"], match["revision"] or "main"
        if revision in (".", ".."):  # huggingface_hub joins it to the cache's refs/ folder
            raise SourceRefused(f"source {uri!r}: a revision may not be '.' or '..'")
        self.cache_dir = Path(cache_dir or hf_constants.HF_HUB_CACHE).resolve()
        try:
            snapshot = Path(
                snapshot_download(repo_id, revision=revision, cache_dir=self.cache_dir, local_files_only=True)
            )
        except (LocalEntryNotFoundError, HFValidationError) as exc:
            raise SourceRefused(
                f"{repo_id}@{revision} is not in the local Hugging Face cache ({self.cache_dir}); "
                f"nothing is downloaded: put it there first (huggingface-cli download {repo_id} --revision {revision})"
            ) from exc
        self.uri = uri
        self.resolved = {"repo": repo_id, "revision": revision, "commit": snapshot.name}
        self.disposable = False
        self._directory = LocalDirectorySource(snapshot, [self.cache_dir])

    def resolve(self) -> dict[str, str]:
        return self.resolved

    def files(self, scratch: Path | None = None) -> Iterator[tuple[Path, str]]:
        # The snapshot's files are symlinks into the cache's blobs: followed, and confined to the cache.
        return self._directory.files()


def _hf_source(uri: str, allowed_roots: Sequence[Path], tracking_uri: str | None) -> ModelSource:
    return HuggingFaceCacheSource(uri)


def _mlflow_source(uri: str, allowed_roots: Sequence[Path], tracking_uri: str | None) -> ModelSource:
    try:
        from .mlflow_source import MlflowSource
    except ImportError as exc:  # the client is a requirement; this only guards a trimmed install
        raise SourceRefused(f"source {uri!r} needs the MLflow client (pip install mlflow-skinny): {exc}") from exc
    return MlflowSource(uri, tracking_uri)


SourceFactory = Callable[[str, Sequence[Path], str | None], ModelSource]
SOURCE_SCHEMES: dict[str, SourceFactory] = {
    "": _local_source,
    "file": _local_source,
    "hf": _hf_source,
    "models": _mlflow_source,
    "runs": _mlflow_source,
}


def open_source(uri: str, allowed_roots: Sequence[Path], tracking_uri: str | None = None) -> ModelSource:
    """Turn a source URI into a ModelSource, or raise SourceRefused. Only parses and checks locally:
    ``resolve()`` is where a registry is asked. ``tracking_uri`` is the model's own MLflow server, if
    it has one (else ``MLFLOW_TRACKING_URI``)."""
    if not isinstance(uri, str) or not uri.strip():
        raise SourceRefused("source must be a non-empty path or URI")
    scheme = urlparse(uri).scheme
    if len(scheme) == 1:  # a Windows drive letter, not a scheme
        scheme = ""
    factory = SOURCE_SCHEMES.get(scheme)
    if factory is None:
        known = ", ".join(sorted(s or "<absolute path>" for s in SOURCE_SCHEMES))
        raise SourceRefused(f"source scheme {scheme!r} is not supported (supported: {known})")
    return factory(uri, allowed_roots, tracking_uri)


def checked_source(
    uri: str, allowed_roots: Sequence[Path], tracking_uri: str | None = None, *, artifacts: bool = True
) -> ModelSource:
    """Open a source, ask it what it points at now and, unless ``artifacts`` is False (a folder of models,
    not one), check that its files are a whole model: what registering a model checks. Raises
    SourceRefused saying why (InvalidArtifacts naming each damaged or missing file), also when a
    registry cannot be asked now: nothing unchecked is registered. A source that downloads (MLflow) is
    not downloaded here; its artifacts are checked at fetch, on the copy."""
    source = open_source(uri, allowed_roots, tracking_uri)
    try:
        source.resolve()
    except SourceUnavailable as exc:
        raise SourceRefused(f"cannot be checked now ({exc}); try again once the registry answers") from exc
    if artifacts and not source.disposable:
        check_artifacts(uri, source.files())
    return source
