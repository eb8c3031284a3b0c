"""Costs that must stay flat as the number of models grows, measured side by side in one run.

    .venv/bin/python bench/bench_scale.py [--sections load-stall,memory-plan] [--loads 10] [--models 1000]
        [--memory-loaded 100]

Sections (each a function returning rows of one table, printed at the end):

  load stall: one real MLServer replica at a time, first on MLServer's default repository class, then
      on ours (LayoutModelRepository), its repository holding 10 models and then --models models (3
      revisions each, laid out as repository.py lays them out; every revision's settings point at one
      tiny model's folder). A client thread calls a steady model A (tiny, loaded) without pause while
      model B is loaded --loads times; the rows give A's p99 latency during B's loads at 10 models and
      at --models models, and their ratio (target for ours <= 1.2), with the load calls' own time.
      The two sizes alternate load by load (the models beyond the first 10 are moved in and out of the
      root between loads), so a drift of the machine's load falls on both alike.

  memory plan: what a deploy's memory check costs (deployments/services/memory.py plan_green: the
      replica's index, the footprints of what it has loaded, the running deploys' reservations, under
      the capacity lock), on a throwaway SQLite database registering --models models with 3 revisions
      each, against one real MLServer replica with 10 and then --memory-loaded tiny models loaded.
      The database's queries per plan (what holds the lock) must not grow with the models loaded or
      registered; the replica's index, read before the lock, is most of a plan's time.

The models are built here (tests/support/tiny_models.py: 1-layer 32-dimension BERT, random weights),
everything lives in a temporary folder, and every server started is stopped at the end. The machine's
load shows in every figure: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deployments.inference import ModelRepository, V2Client
from deployments.inference.server import LAYOUT_REPOSITORY, LocalMLServer
from tests.support.routing import Traffic, write_versioned_settings
from tests.support.tiny_models import build_tiny_model, folder_size

REVISIONS_PER_MODEL = 3
SMALL_REPOSITORY = 10
STALL_TARGET = 1.2
# MLServer's own class (None: the settings name none) and ours.
REPOSITORY_CLASSES = {"MLServer default": None, "ours (layout)": LAYOUT_REPOSITORY}


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


@dataclass
class Row:
    """One line of the final table: a measured figure, with its target (an upper bound) when it has one."""

    section: str
    label: str
    shown: str
    measured: float | None = None
    target: float | None = None
    target_shown: str = ""

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        if self.measured is None:
            return "NOT MEASURED"
        return "PASS" if self.measured <= self.target else "FAIL"


# -- load stall ---------------------------------------------------------------------------------


def model_name(n: int) -> str:
    return f"model-{n:04d}"


def revision(n: int, r: int) -> str:
    return f"{r:04x}{n:012x}"


def lay_out_models(root: Path, numbers: range, artifact: Path) -> None:
    """Models as a deploy leaves them (settings per revision, a live pointer), all pointing at ``artifact``."""
    repository = ModelRepository(root)
    for n in numbers:
        for r in range(REVISIONS_PER_MODEL):
            write_versioned_settings(root, model_name(n), revision(n, r), artifact)
        repository.set_live(model_name(n), revision(n, 0))


def move_models(numbers: range, source: Path, target: Path) -> None:
    """Move whole model folders between the root and a parking folder beside it (renames: instant)."""
    for n in numbers:
        os.rename(source / model_name(n), target / model_name(n))


@dataclass
class StallSample:
    load_seconds: list[float]
    during_ms: list[float]  # latencies of A's requests that overlapped a load of B


QUIET_SECONDS = 2.0


def measure_stall(
    server: LocalMLServer, parked: Path, models: int, loads: int
) -> tuple[list[float], dict[int, StallSample]]:
    """A's latency with nothing loading, and while B loads at SMALL_REPOSITORY and at ``models`` models,
    alternating load by load."""
    root = server.repository_root
    steady = f"{model_name(0)}~{revision(0, 0)}"
    # B: the other revisions of the first models, which stay in the root at either size.
    candidates = [f"{model_name(n)}~{revision(n, r)}" for n in range(1, SMALL_REPOSITORY) for r in range(3)]
    extra = range(SMALL_REPOSITORY, models)
    samples = {size: StallSample([], []) for size in (SMALL_REPOSITORY, models)}
    windows: dict[int, list[tuple[float, float]]] = {size: [] for size in samples}
    with V2Client(server.url, timeout=60, load_timeout=300) as client:
        client.load(steady)
        # A second model's first load pays one-off costs (imports, allocator): not a figure of either size.
        client.load(candidates[-1])
        client.unload(candidates[-1])
        with Traffic(server.url, steady, clients=1) as traffic:
            time.sleep(0.5)
            quiet = (time.monotonic(), time.monotonic() + QUIET_SECONDS)
            time.sleep(QUIET_SECONDS)
            for n in range(loads * 2):
                size = (SMALL_REPOSITORY, models)[n % 2]
                if size == models:
                    move_models(extra, parked, root)
                name = candidates[n % len(candidates)]
                time.sleep(0.3)  # A back to its steady pace before the load
                started = time.monotonic()
                client.load(name)
                ended = time.monotonic()
                windows[size].append((started, ended))
                samples[size].load_seconds.append(ended - started)
                time.sleep(0.2)
                client.unload(name)
                if size == models:
                    move_models(extra, root, parked)
            time.sleep(0.3)
        client.unload(steady)
    if traffic.failures:
        raise RuntimeError(f"{len(traffic.failures)} requests to A failed, first: {traffic.failures[0]}")
    for size, spans in windows.items():
        samples[size].during_ms = [
            (answered - sent) * 1000
            for sent, answered, _ in traffic.answers
            if any(sent < end and answered > start for start, end in spans)
        ]
    alone_ms = [(answered - sent) * 1000 for sent, answered, _ in traffic.answers if quiet[0] <= sent < quiet[1]]
    return alone_ms, samples


def section_load_stall(args: argparse.Namespace, workdir: Path) -> list[Row]:
    section = "load stall"
    artifact = build_tiny_model(workdir / "tiny-model")
    print(f"{section}: tiny model {folder_size(artifact) / 1e6:.1f} MB; {args.loads} loads of B per size", flush=True)
    rows = []
    for label, implementation in REPOSITORY_CLASSES.items():
        base = workdir / label.split()[0].lower()
        root, parked = base / "repository", base / "parked"
        parked.mkdir(parents=True)
        lay_out_models(root, range(SMALL_REPOSITORY), artifact)
        lay_out_models(parked, range(SMALL_REPOSITORY, args.models), artifact)
        server = LocalMLServer(root, base / "server", repository_implementation=implementation)
        started = time.monotonic()
        try:
            server.start()
            alone_ms, samples = measure_stall(server, parked, args.models, args.loads)
        finally:
            server.stop()
        small, large = samples[SMALL_REPOSITORY], samples[args.models]
        p99_small, p99_large = percentile(small.during_ms, 99), percentile(large.during_ms, 99)
        ratio = p99_large / p99_small
        print(f"  {label}: done in {time.monotonic() - started:.0f} s", flush=True)
        rows.append(
            Row(
                section,
                f"{label}: A alone, nothing loading",
                f"p99 {percentile(alone_ms, 99):.1f} ms, median {statistics.median(alone_ms):.1f} ms "
                f"({len(alone_ms)} requests in {QUIET_SECONDS:g} s)",
            )
        )
        for size, sample in samples.items():
            rows.append(
                Row(
                    section,
                    f"{label}, {size:,} models: A during B's load / load call",
                    f"p99 {percentile(sample.during_ms, 99):.1f} ms, max {max(sample.during_ms):.1f} ms "
                    f"({len(sample.during_ms)} requests) / median {statistics.median(sample.load_seconds) * 1000:.0f} "
                    f"ms, max {max(sample.load_seconds) * 1000:.0f} ms",
                )
            )
        rows.append(
            Row(
                section,
                f"{label}: A's p99 at {args.models:,} / at {SMALL_REPOSITORY} models",
                f"{ratio:.2f}x ({p99_large:.1f} / {p99_small:.1f} ms)",
                ratio,
                STALL_TARGET if implementation == LAYOUT_REPOSITORY else None,
                f"<= {STALL_TARGET}x" if implementation == LAYOUT_REPOSITORY else "(shows the problem)",
            )
        )
    return rows


# -- memory plan --------------------------------------------------------------------------------

PLANS_PER_SIZE = 5


def section_memory_plan(args: argparse.Namespace, workdir: Path) -> list[Row]:
    section = "memory plan"
    workdir.mkdir(parents=True)
    from bench_operators import setup_django  # the same throwaway database setup

    setup_django(workdir, None)
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from deployments.inference import Fleet, GreenDeployer, Revision, served_name
    from deployments.inference.router import RouteTable
    from deployments.models import EmbeddingModel, ModelRevision, Task, TaskKind, TaskStatus
    from deployments.services.memory import plan_green

    artifact = build_tiny_model(workdir / "tiny-model")
    root = workdir / "repository"
    lay_out_models(root, range(args.models), artifact)
    EmbeddingModel.objects.bulk_create(
        EmbeddingModel(id=model_name(n), source=str(artifact)) for n in range(args.models + 1)
    )
    ModelRevision.objects.bulk_create(
        ModelRevision(
            name=served_name(model_name(n), revision(n, r)),
            embedding_model_id=model_name(n),
            revision=revision(n, r),
            memory_bytes=4_019_456,
            measured=True,
        )
        for n in range(args.models + 1)
        for r in range(REVISIONS_PER_MODEL)
    )
    green_id = model_name(args.models)  # registered, with revisions on record, never loaded
    green = Revision(green_id, revision(args.models, 0), root / green_id, 1, 0)
    task = Task.objects.create(
        kind=TaskKind.DEPLOYMENT, embedding_model_id=green_id, status=TaskStatus.PROCESSING, sequence=1
    )
    server = LocalMLServer(root, workdir / "server", repository_implementation=LAYOUT_REPOSITORY)
    rows = []
    results: dict[int, tuple[float, int]] = {}
    try:
        server.start()
        fleet = Fleet(server.url, [server.url], RouteTable(workdir / "xds"))
        deployer = GreenDeployer(fleet, ModelRepository(root), allowed_roots=[])
        loaded = 0
        with V2Client(server.url, timeout=120) as client:
            for size in (SMALL_REPOSITORY, args.memory_loaded):
                for n in range(loaded, size):
                    client.load(served_name(model_name(n), revision(n, 0)), timeout=120)
                loaded = size
                times, queries, query_ms = [], [], []
                for _ in range(PLANS_PER_SIZE):
                    with CaptureQueriesContext(connection) as captured:
                        started = time.perf_counter()
                        refusal = plan_green(task.pk, deployer, green, [server.url])
                        times.append((time.perf_counter() - started) * 1000)
                    assert refusal is None, refusal
                    queries.append(len(captured))
                    # The database's part (under the capacity lock); the rest is the replica's index.
                    query_ms.append(sum(float(query["time"]) for query in captured.captured_queries) * 1000)
                results[size] = (statistics.median(query_ms), max(queries))
                rows.append(
                    Row(
                        section,
                        f"{size} loaded, {args.models:,} models registered: one plan",
                        f"median {statistics.median(times):.0f} ms, of which {max(queries)} queries "
                        f"{statistics.median(query_ms):.1f} ms (the rest: the replica's index)",
                    )
                )
        fleet.close()
    finally:
        server.stop()
    (small_ms, small_queries), (large_ms, large_queries) = results[SMALL_REPOSITORY], results[args.memory_loaded]
    rows.append(
        Row(
            section,
            f"queries per plan at {args.memory_loaded} / at {SMALL_REPOSITORY} loaded",
            f"{large_queries / small_queries:.2f}x ({large_queries} / {small_queries}); "
            f"their time {large_ms / small_ms:.2f}x",
            large_queries / small_queries,
            1.0,
            "<= 1.0x",
        )
    )
    return rows


# -- the table ----------------------------------------------------------------------------------

SECTIONS: dict[str, Callable[[argparse.Namespace, Path], list[Row]]] = {
    "load-stall": section_load_stall,
    "memory-plan": section_memory_plan,
}


def report(rows: list[Row]) -> None:
    widths = [max(len(text) for text in column) for column in zip(*[(r.label, r.shown) for r in rows], strict=True)]
    section = None
    for row in rows:
        if row.section != section:
            section = row.section
            print(f"\n{section}")
        line = f"  {row.label:<{widths[0]}}  {row.shown:<{widths[1]}}"
        if row.target_shown:
            line += f"  {row.target_shown:<10} {row.verdict}"
        print(line.rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of: {', '.join(SECTIONS)}")
    parser.add_argument("--models", type=int, default=1000, help="models in the large repository (load stall)")
    parser.add_argument("--loads", type=int, default=10, help="loads of B at each repository size (load stall)")
    parser.add_argument("--memory-loaded", type=int, default=100, help="models loaded on the replica (memory plan)")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    started = time.monotonic()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for name in chosen:
            rows += SECTIONS[name](args, Path(tmp) / name)
    print(f"\n{os.cpu_count()} CPUs")
    report(rows)
    print(f"\ntotal {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
