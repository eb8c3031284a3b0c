"""What a drill compares before and after a fault: the repository on disk, the server, the database rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deployments.inference import V2Client
from deployments.models import EmbeddingModel, ModelLease, Task, TaskEvent


def repository_tree(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Every path under ``root`` with (is a folder, size, modification time in ns)."""
    tree = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        tree[str(path.relative_to(root))] = (path.is_dir(), info.st_size, info.st_mtime_ns)
    return tree


def served(server_url: str) -> list[tuple[str, str]]:
    """(name, state) of every model the server's repository index lists."""
    with V2Client(server_url) as client:
        return sorted((entry["name"], entry.get("state", "")) for entry in client.index())


def rows(embedding_model_id: str) -> dict[str, Any]:
    """The model's registry entry, tasks, timeline events and lease, as stored."""
    tasks = Task.objects.filter(embedding_model_id=embedding_model_id).order_by("sequence", "attempt")
    events = TaskEvent.objects.filter(task__embedding_model_id=embedding_model_id).order_by("id")
    return {
        "model": EmbeddingModel.objects.filter(pk=embedding_model_id).values().first(),
        "tasks": list(tasks.values()),
        "events": list(events.values()),
        "lease": ModelLease.objects.filter(pk=embedding_model_id).values("owner", "generation", "task_id").first(),
    }
