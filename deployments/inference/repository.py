"""The model repository the inference server reads: immutable revisions and the settings that point at them.

Layout, one folder per model::

    <root>/settings.json                                         the servers' shared settings
    <root>/<model_id>/live.json                                  which revision the model's URL serves
    <root>/<model_id>/<model_id>~<revision>/model-settings.json  name <model_id>~<revision>: loadable
    <root>/<model_id>/revisions/<revision>/...                   the artifacts, read-only, + MANIFEST.sha256

Each settings file sits in a folder named after the model it names, as MLServer expects. Every
replica reads the same repository; a revision is loadable on them while its settings exist
(the live one, and during a deploy the one beside it), and ``live.json`` is what the router
sends the model's traffic to.

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
from .ids import REVISION_SEPARATOR, served_name, validate_model_id
from .integrity import check_artifacts, loaded_weight_bytes
from .sources import ModelSource

MANIFEST_NAME = "MANIFEST.sha256"
PROVENANCE_NAME = "PROVENANCE.json"
SETTINGS_NAME = "model-settings.json"
LIVE_NAME = "live.json"
DEFAULT_RUNTIME = "deployments.inference.runtime.SentenceTransformerRuntime"
DEFAULT_KEEP_REVISIONS = 3
_CHUNK = 1 << 20
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

    def settings_path(self, model_id: str, revision: str) -> Path:
        name = served_name(model_id, revision)
        path = self.model_dir(model_id) / name / SETTINGS_NAME
        if not path.resolve().is_relative_to(self.root):
            raise InferenceError(f"settings of {name!r} would lie outside the repository")
        return path

    def model_ids(self) -> list[str]:
        """Every model that has a folder in the repository."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    # -- revisions ---------------------------------------------------------------------------

    def create_revision(
        self, model_id: str, source: ModelSource, before_publish: Callable[[], None] | None = None
    ) -> Revision:
        """Copy ``source`` into a new immutable revision, verify the copy, and return it.

        Each file is copied by the kernel (sendfile) while a second thread hashes the source; the
        copy is hashed once written, and every pair must match before the manifest is written.
        The copy's artifacts must be whole (``integrity.check_artifacts``: InvalidArtifacts otherwise).
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
        # Where a source that downloads puts its files; the same file system, so they are moved in.
        scratch = incoming.with_name(incoming.name + ".download")
        try:
            copies: list[tuple[str, Future[str], Future[str], int]] = []
            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="checksum") as hashing:
                for src, relpath in source.files(scratch):
                    dest = incoming / relpath
                    if not dest.resolve().is_relative_to(incoming.resolve()):
                        raise SourceRefused(f"source file {relpath!r} would be written outside the revision")
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    if source.disposable:
                        os.replace(src, dest)  # the source's own download: nothing to compare it with
                        copy_checksum = source_checksum = hashing.submit(_sha256_file, dest)
                    else:
                        source_checksum = hashing.submit(_sha256_file, src)
                        shutil.copyfile(src, dest)  # follows a (confined) symlink: the revision holds real files
                        copy_checksum = hashing.submit(_sha256_file, dest)
                    copies.append((relpath, source_checksum, copy_checksum, dest.stat().st_size))
            if not copies:
                raise SourceRefused(f"source {source.uri} has no files")
            for relpath, source_checksum, copy_checksum, _ in copies:
                if source_checksum.result() != copy_checksum.result():
                    raise ChecksumMismatch(f"{relpath} differs from its source after copying (changed while copied?)")
            # The copy is what replicas will load: a truncated or unparsable file stops here, named by
            # its source, rather than at load time under the repository's path.
            check_artifacts(source.uri, ((incoming / relpath, relpath) for relpath, *_ in copies))
            manifest = sorted((relpath, source_checksum.result()) for relpath, source_checksum, _, _ in copies)
            manifest_text = "".join(f"{checksum}  {relpath}\n" for relpath, checksum in manifest)
            (incoming / MANIFEST_NAME).write_text(manifest_text)
            # Where the bytes came from and what the URI resolved to then (an alias moves later). Not in
            # the manifest: the same bytes from another source are the same revision.
            atomic_write_json(incoming / PROVENANCE_NAME, {"uri": source.uri, **source.resolved})
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
            for leftover in (incoming, scratch):
                if leftover.exists():
                    self._rmtree(leftover)

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

    def kept_revision(self, model_id: str, revision: str) -> Revision:
        """A revision the repository keeps, counted as create_revision counts it: the artifacts its manifest
        lists (not the manifest itself, nor PROVENANCE.json), so the same revision says the same size."""
        path = self.revision_path(model_id, revision)
        artifacts = self.manifest(path)
        return Revision(model_id, revision, path, len(artifacts), sum((path / p).stat().st_size for p in artifacts))

    def manifest(self, revision_path: Path) -> dict[str, str]:
        """The files of a revision and their checksums, as its manifest lists them."""
        return _read_manifest(revision_path)

    def provenance(self, model_id: str, revision: str) -> dict[str, str]:
        """The source URI a revision was first fetched from and what it resolved to ({} if not recorded)."""
        try:
            return json.loads((self.revision_path(model_id, revision) / PROVENANCE_NAME).read_text())
        except (OSError, ValueError):
            return {}

    def estimated_memory_bytes(self, model_id: str, revision: str) -> int:
        """What a kept revision's weights will hold in a replica's memory, from its files' headers and sizes."""
        path = self.revision_path(model_id, revision)
        return loaded_weight_bytes(path / relpath for relpath in self.manifest(path))

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

    # -- settings: which revisions are loadable, and which one is live -------------------------

    def write_settings(self, model_id: str, revision: str) -> Path:
        """Make ``revision`` loadable under its own name, ``<model_id>~<revision>``, atomically."""
        name = served_name(model_id, revision)
        path = self.settings_path(model_id, revision)
        # No "version": MLServer would treat each version as one more model to keep loaded.
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

    def remove_settings(self, model_id: str, revision: str) -> bool:
        """Make ``revision`` unloadable again: its settings folder goes."""
        path = self.settings_path(model_id, revision)
        existed = path.exists()
        path.unlink(missing_ok=True)
        if path.parent.is_dir() and not any(path.parent.iterdir()):
            path.parent.rmdir()
        return existed

    def loadable_revisions(self, model_id: str) -> list[str]:
        """The revisions of ``model_id`` whose settings are in the repository, sorted."""
        prefix = validate_model_id(model_id) + REVISION_SEPARATOR
        folder = self.model_dir(model_id)
        if not folder.is_dir():
            return []
        return sorted(
            p.name.removeprefix(prefix)
            for p in folder.iterdir()
            if p.name.startswith(prefix) and (p / SETTINGS_NAME).is_file()
        )

    def live_revision(self, model_id: str) -> str | None:
        """The revision the model's URL serves (the repository's word), or None."""
        try:
            return json.loads((self.model_dir(model_id) / LIVE_NAME).read_text())["revision"]
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def set_live(self, model_id: str, revision: str | None) -> None:
        """Point the model's URL at ``revision`` (None: at nothing), atomically."""
        path = self.model_dir(model_id) / LIVE_NAME
        if revision is None:
            path.unlink(missing_ok=True)
        else:
            atomic_write_json(path, {"revision": revision})

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
