"""The model repository the inference server reads: immutable revisions and the settings that point at them.

Layout, one folder per model::

    <root>/settings.json                                      the server's own settings
    <root>/<model_id>/model-settings.json                     name <model_id>: what serves traffic
    <root>/<model_id>/<model_id>~green-<tag>/model-settings.json   name <model_id>~green-<tag>: an attempt's green
    <root>/<model_id>/revisions/<revision>/...                the artifacts, read-only, + MANIFEST.sha256

Each settings file sits in a folder named after the model it names, as MLServer expects.

A revision id is derived from the manifest, so copying the same artifacts twice converges on one
revision, which is what makes the fetch stage idempotent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ChecksumMismatch, InferenceError, SourceRefused
from .ids import STAGING_SUFFIX, staging_name, validate_model_id
from .sources import ModelSource

MANIFEST_NAME = "MANIFEST.sha256"
SETTINGS_NAME = "model-settings.json"
DEFAULT_RUNTIME = "deployments.inference.runtime.SentenceTransformerRuntime"
DEFAULT_KEEP_REVISIONS = 3
_CHUNK = 1 << 20

STABLE = "stable"
STAGING = "staging"
# A half-copied revision younger than this may belong to an attempt still copying: it is left alone.
STALE_INCOMING_SECONDS = 3600


@dataclass(frozen=True)
class Revision:
    model_id: str
    revision: str
    path: Path
    files: int
    size_bytes: int


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_manifest(revision_path: Path) -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in (revision_path / MANIFEST_NAME).read_text().splitlines():
        checksum, _, relpath = line.partition("  ")
        entries[relpath] = checksum
    return entries


def _make_read_only(path: Path) -> None:
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            os.chmod(Path(dirpath) / name, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def atomic_write_json(path: Path, data: dict[str, Any], indent: int | None = 2) -> None:
    """Write JSON beside ``path`` and rename it into place, so a reader (MLServer, Envoy watching a
    folder for files moved into it) sees the old file or the new one, never half of either."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=indent)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ModelRepository:
    """Reads and writes one model repository root. Every path it touches lies under that root."""

    def __init__(
        self,
        root: Path | str,
        runtime: str = DEFAULT_RUNTIME,
        keep_revisions: int = DEFAULT_KEEP_REVISIONS,
    ):
        self.root = Path(root).resolve()
        self.runtime = runtime
        self.keep_revisions = max(1, keep_revisions)

    # -- paths -------------------------------------------------------------------------------

    def model_dir(self, model_id: str) -> Path:
        path = self.root / validate_model_id(model_id)
        # Belt and braces: a validated id cannot escape, but a symlinked model folder could.
        if path.exists() and not path.resolve().is_relative_to(self.root):
            raise InferenceError(f"model folder {path} resolves outside the repository")
        return path

    def revisions_dir(self, model_id: str) -> Path:
        return self.model_dir(model_id) / "revisions"

    def settings_path(self, model_id: str, slot: str, tag: str = "") -> Path:
        if slot == STABLE:
            return self.model_dir(model_id) / SETTINGS_NAME
        if slot == STAGING:
            return self.model_dir(model_id) / staging_name(model_id, tag) / SETTINGS_NAME
        raise ValueError(f"unknown settings slot {slot!r}")

    def staging_tags(self, model_id: str) -> list[str]:
        """The tags of every attempt whose staging (green) folder is in the repository ("" for an untagged one)."""
        prefix = validate_model_id(model_id) + STAGING_SUFFIX
        folder = self.model_dir(model_id)
        if not folder.is_dir():
            return []
        names = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith(prefix))
        return [name[len(prefix) :].removeprefix("-") for name in names]

    # -- revisions ---------------------------------------------------------------------------

    def create_revision(
        self, model_id: str, source: ModelSource, before_publish: Callable[[], None] | None = None
    ) -> Revision:
        """Copy ``source`` into a new immutable revision, verify the copy, and return it.

        Each file is copied by the kernel (sendfile) while a second thread hashes the source; the
        copy is hashed once written, and every pair must match before the manifest is written.
        Copies go into a hidden folder renamed into place, so a crash never leaves a half-copied
        revision under ``revisions/``. If the same artifacts are already there and verify, that
        revision is reused. ``before_publish`` runs just before the copy becomes visible (the
        caller's fence: a superseded attempt stops there, leaving only its own hidden folder).
        """
        revisions = self.revisions_dir(model_id)
        revisions.mkdir(parents=True, exist_ok=True)
        self._remove_incoming(model_id)
        incoming = self.model_dir(model_id) / f".incoming-{uuid.uuid4().hex}"
        incoming.mkdir()
        try:
            copies: list[tuple[str, Future[str], Future[str], int]] = []
            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="checksum") as hashing:
                for src, relpath in source.files():
                    dest = incoming / relpath
                    if not dest.resolve().is_relative_to(incoming.resolve()):
                        raise SourceRefused(f"source file {relpath!r} would be written outside the revision")
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    source_checksum = hashing.submit(_sha256_file, src)
                    shutil.copyfile(src, dest)  # follows a (confined) symlink: the revision holds real files
                    copies.append((relpath, source_checksum, hashing.submit(_sha256_file, dest), dest.stat().st_size))
            if not copies:
                raise SourceRefused(f"source {source.uri} has no files")
            for relpath, source_checksum, copy_checksum, _ in copies:
                if source_checksum.result() != copy_checksum.result():
                    raise ChecksumMismatch(f"{relpath} differs from its source after copying (changed while copied?)")
            manifest = sorted((relpath, source_checksum.result()) for relpath, source_checksum, _, _ in copies)
            manifest_text = "".join(f"{checksum}  {relpath}\n" for relpath, checksum in manifest)
            (incoming / MANIFEST_NAME).write_text(manifest_text)
            revision_id = hashlib.sha256(manifest_text.encode()).hexdigest()[:16]
            final = revisions / revision_id
            if before_publish is not None:
                before_publish()
            if final.exists():
                try:
                    self.verify(final)
                    os.utime(final)  # most recently deployed: last to be pruned
                except ChecksumMismatch:
                    self._rmtree(final)
            if not final.exists():
                _make_read_only(incoming)
                os.rename(incoming, final)
            total = sum(size for *_, size in copies)
            return Revision(model_id, revision_id, final, len(copies), total)
        finally:
            if incoming.exists():
                self._rmtree(incoming)

    def verify(self, revision_path: Path) -> None:
        """Raise ChecksumMismatch unless every file of the manifest is present with its checksum."""
        try:
            expected = _read_manifest(revision_path)
        except FileNotFoundError:
            raise ChecksumMismatch(f"revision {revision_path.name} has no manifest") from None
        for relpath, checksum in expected.items():
            path = revision_path / relpath
            if not path.is_file():
                raise ChecksumMismatch(f"revision {revision_path.name} is missing {relpath}")
            if _sha256_file(path) != checksum:
                raise ChecksumMismatch(f"revision {revision_path.name}: {relpath} does not match its checksum")

    def revision_path(self, model_id: str, revision: str) -> Path:
        return self.revisions_dir(model_id) / revision

    def list_revisions(self, model_id: str) -> list[str]:
        """Revision ids of a model, most recently deployed first."""
        folder = self.revisions_dir(model_id)
        if not folder.is_dir():
            return []
        entries = [p for p in folder.iterdir() if p.is_dir()]
        entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        return [p.name for p in entries]

    def prune(self, model_id: str, protect: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Remove all but the ``keep_revisions`` most recent revisions; never one in ``protect``."""
        removed = []
        for revision in self.list_revisions(model_id)[self.keep_revisions :]:
            if revision not in protect:
                self._rmtree(self.revision_path(model_id, revision))
                removed.append(revision)
        return removed

    # -- settings ----------------------------------------------------------------------------

    def write_settings(self, model_id: str, slot: str, revision: str, tag: str = "") -> Path:
        """Point the stable name, or an attempt's staging name, of ``model_id`` at ``revision``, atomically."""
        name = model_id if slot == STABLE else staging_name(model_id, tag)
        path = self.settings_path(model_id, slot, tag)
        # No "version": bumping the version of a name that serves traffic breaks requests mid-load.
        atomic_write_json(
            path,
            {
                "name": name,
                "implementation": self.runtime,
                "parameters": {
                    "uri": str(self.revision_path(model_id, revision)),
                    "extra": {"model_id": model_id, "revision": revision},
                },
            },
        )
        return path

    def settings_revision(self, model_id: str, slot: str, tag: str = "") -> str | None:
        """The revision a settings slot points at, or None when the slot is empty or unreadable."""
        try:
            data = json.loads(self.settings_path(model_id, slot, tag).read_text())
            return data["parameters"]["extra"]["revision"]
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def remove_settings(self, model_id: str, slot: str, tag: str = "") -> bool:
        path = self.settings_path(model_id, slot, tag)
        existed = path.exists()
        path.unlink(missing_ok=True)
        if slot == STAGING and path.parent.is_dir() and not any(path.parent.iterdir()):
            path.parent.rmdir()  # an attempt's staging folder goes with its settings
        return existed

    # -- removal -----------------------------------------------------------------------------

    def remove_model(self, model_id: str) -> list[str]:
        """Delete everything the repository holds of ``model_id``; return the revisions removed."""
        revisions = self.list_revisions(model_id)
        folder = self.model_dir(model_id)
        if folder.exists():
            self._rmtree(folder)
        return revisions

    def _remove_incoming(self, model_id: str) -> None:
        """Remove half-copied revisions left by crashed attempts; a recent one may still be copying."""
        stale_before = time.time() - STALE_INCOMING_SECONDS
        for leftover in self.model_dir(model_id).glob(".incoming-*"):
            if leftover.stat().st_mtime < stale_before:
                self._rmtree(leftover)

    @staticmethod
    def _rmtree(path: Path) -> None:
        # Revision files are read-only; the folder is writable, so removing entries works as is.
        shutil.rmtree(path, ignore_errors=False)
