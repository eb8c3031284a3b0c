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

    def _settings_paths(self) -> list[str]:
        """``<root>/<model_id>/<model_id>~*/model-settings.json`` that exist, sorted; nothing deeper is looked at."""
        paths = []
        for model_folder in _subfolders(self._root):
            prefix = model_folder.name + REVISION_SEPARATOR
            for served_folder in _subfolders(model_folder.path):
                path = os.path.join(served_folder.path, DEFAULT_MODEL_SETTINGS_FILENAME)
                if served_folder.name.startswith(prefix) and os.path.isfile(path):
                    paths.append(path)
        return sorted(paths)

    def _read_all(self) -> list[ModelSettings]:
        found = []
        for path in self._settings_paths():
            try:
                found.append(load_model_settings(path))
            except Exception:
                logger.exception(f"Failed load model settings at {path}.")
        return found

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
