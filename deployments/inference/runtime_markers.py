"""Instance markers: how a test or benchmark counts the model instances a server holds at any moment.

When the server runs with ``EMBEDDING_RUNTIME_INSTANCE_DIR`` set, each loaded runtime instance keeps
one empty file there, named ``<server model name>@<pid>-<instance>``, until it is unloaded.
Kept apart from runtime.py so counting needs no MLServer import.
"""

from __future__ import annotations

from pathlib import Path

INSTANCE_MARKER_DIR_ENV = "EMBEDDING_RUNTIME_INSTANCE_DIR"


def count_instances(marker_dir: Path, model_id: str) -> int:
    """Instances of ``model_id`` loaded now, under its stable or its staging name."""
    if not marker_dir.is_dir():
        return 0
    return sum(1 for marker in marker_dir.iterdir() if marker.name.split("@", 1)[0].split("~", 1)[0] == model_id)
