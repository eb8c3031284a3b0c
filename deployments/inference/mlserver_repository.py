"""The model repository class MLServer runs on our replicas: it knows the layout of repository.py.

MLServer's default (``SchemalessModelRepository``) answers every load by globbing the whole root
for ``**/model-settings.json`` and parsing every match, inside the server's event loop: with a
thousand models that is more than a second in which the replica answers nobody. Here a served name
says where its settings are, so ``find`` is one stat and one small read::

    <model_id>~<revision>  ->  <root>/<model_id>/<model_id>~<revision>/model-settings.json

and ``list`` (the repository index) walks only those two known levels. Both build the settings
with MLServer's own ``load_model_settings``, so a model gets the very ModelSettings the default
would give it (``name`` and ``parameters.uri`` filled from its folder when absent, ``_source`` set).

MLServer imports this class by the dotted path the replicas' ``settings.json`` names (server.py
writes it), with the project on its ``PYTHONPATH``, as it imports our runtime.
"""

from __future__ import annotations

import asyncio
import os

from mlserver.errors import ModelNotFound
from mlserver.logging import logger
from mlserver.repository import DEFAULT_MODEL_SETTINGS_FILENAME, ModelRepository
from mlserver.repository.load import load_model_settings
from mlserver.settings import ModelParameters, ModelSettings
from pydantic import ValidationError

from .errors import InvalidModelId
from .ids import REVISION_SEPARATOR, validate_model_id


class LayoutModelRepository(ModelRepository):
    """Finds ``<model_id>~<revision>`` by its path alone; lists ``<root>/*/<model_id>~*/model-settings.json``."""

    def __init__(self, root: str):
        self._root = os.path.abspath(root)  # as the default does: the settings' _source and uri are absolute
        # The index's settings as last read, by path, with the file's (mtime, size, inode) then: a settings file
        # is only ever replaced whole (written beside and renamed), so an unchanged stat is unchanged settings.
        self._parsed: dict[str, tuple[tuple[int, int, int], ModelSettings]] = {}

    def settings_path(self, name: str) -> str | None:
        """Where the settings of served name ``name`` live, or None when ``name`` is not one of ours."""
        model_id, separator, revision = name.partition(REVISION_SEPARATOR)
        # The whole name is one folder under the model's: no '/', no NUL, nothing that climbs.
        if not separator or not revision or "/" in name or "\0" in name:
            return None
        try:
            validate_model_id(model_id)
        except InvalidModelId:
            return None
        return os.path.join(self._root, model_id, name, DEFAULT_MODEL_SETTINGS_FILENAME)

    async def find(self, name: str) -> list[ModelSettings]:
        # Not offloaded to a thread: the stat and the read of a file under a kilobyte take microseconds;
        # what costs is MLServer building the ModelSettings (about 1 ms, pydantic-settings reading the
        # environment), pure Python that would hold the GIL, and with it the event loop, in a thread too.
        path = self.settings_path(name)
        if path is None or not os.path.isfile(path):
            raise ModelNotFound(name)
        try:
            model_settings = load_model_settings(path)
        except Exception:
            # The default logs settings it cannot read and then does not find the name: so do we.
            logger.exception(f"Failed load model settings at {path}.")
            raise ModelNotFound(name) from None
        if model_settings.name != name:  # the default finds settings by the name inside them
            raise ModelNotFound(name)
        return [model_settings]

    async def list(self) -> list[ModelSettings]:
        # Offloaded: about 1 ms per settings file, a thousand models' worth would hold the event loop (and
        # every model's traffic) for seconds; in a thread the loop keeps its turns (the GIL switches every 5 ms).
        found = await asyncio.to_thread(self._read_all)
        if not found:
            found = self._default_from_environment()
        return found

    def _settings_files(self) -> list[tuple[str, os.stat_result]]:
        """``<root>/<model_id>/<model_id>~*/model-settings.json`` that exist, sorted, with their stat; nothing
        deeper is looked at."""
        files = []
        for model_folder in _subfolders(self._root):
            prefix = model_folder.name + REVISION_SEPARATOR
            for served_folder in _subfolders(model_folder.path):
                if not served_folder.name.startswith(prefix):
                    continue
                path = os.path.join(served_folder.path, DEFAULT_MODEL_SETTINGS_FILENAME)
                try:
                    files.append((path, os.stat(path)))
                except (FileNotFoundError, NotADirectoryError):
                    continue
        return sorted(files, key=lambda item: item[0])

    def _read_all(self) -> list[ModelSettings]:
        """Every settings file's ModelSettings; only files new or replaced since the last index are parsed
        (parsing is about 1 ms each: a thousand models' index took seconds, and every deploy asks for it)."""
        parsed: dict[str, tuple[tuple[int, int, int], ModelSettings]] = {}
        for path, stat in self._settings_files():
            key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            cached = self._parsed.get(path)
            if cached is not None and cached[0] == key:
                parsed[path] = cached
                continue
            try:
                parsed[path] = (key, load_model_settings(path))
            except Exception:
                logger.exception(f"Failed load model settings at {path}.")
        self._parsed = parsed  # files gone since are forgotten
        # Copies: whatever MLServer does with what it is given, the next index starts from the files.
        return [settings.model_copy(deep=True) for _, settings in parsed.values()]

    @staticmethod
    def _default_from_environment() -> list[ModelSettings]:
        """What the default lists when its root holds no settings: the model the environment describes, if any."""
        try:
            return [ModelSettings(parameters=ModelParameters())]
        except ValidationError:
            return []


def _subfolders(path: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            return [entry for entry in entries if entry.is_dir() and not entry.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return []
