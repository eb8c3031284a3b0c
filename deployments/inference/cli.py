"""Run one part of the fleet in the foreground until SIGTERM or SIGINT (what ``make run`` keeps alive). When
the part ends on its own, the exit status says how (137: it was killed by SIGKILL).

    python -m deployments.inference.cli replica --repository DIR --port 8090
    python -m deployments.inference.cli router --workdir DIR --port 8080 --admin-port 9901

A replica is one MLServer on the shared model repository; the router is the Envoy in front of the
replicas, whose routes (kept in ``<workdir>/xds``) survive its restart.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .processes import LocalProcess, run_in_foreground
from .router import LocalEnvoy
from .server import METRICS_ENDPOINT, METRICS_PORT_OFFSET, LocalMLServer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run one part of the inference fleet in the foreground.")
    parts = parser.add_subparsers(dest="part", required=True)
    replica = parts.add_parser("replica", help="one MLServer replica")
    replica.add_argument("--repository", required=True, help="the shared model repository root (created if missing)")
    replica.add_argument("--workdir", help="folder for its log (default: <repository>/../mlserver-<port>)")
    replica.add_argument("--port", type=int, default=8090, help="HTTP port on 127.0.0.1")
    replica.add_argument("--grpc-port", type=int, default=0, help="gRPC port (default: any free port)")
    replica.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help=f"port of its Prometheus metrics at {METRICS_ENDPOINT} (default: the HTTP port + {METRICS_PORT_OFFSET})",
    )
    router = parts.add_parser("router", help="the Envoy in front of the replicas")
    router.add_argument("--workdir", required=True, help="folder for its bootstrap, routes and log")
    router.add_argument("--port", type=int, default=8080, help="listener port on 127.0.0.1")
    router.add_argument("--admin-port", type=int, default=9901, help="admin port on 127.0.0.1")
    args = parser.parse_args(argv)

    if args.part == "replica":
        repository = Path(args.repository)
        workdir = Path(args.workdir) if args.workdir else repository.parent / f"mlserver-{args.port}"
        server = LocalMLServer(
            repository,
            workdir,
            http_port=args.port,
            grpc_port=args.grpc_port or None,
            metrics_port=args.metrics_port or args.port + METRICS_PORT_OFFSET,
        )
        part: LocalProcess = server
        banner = (
            f"MLServer replica at {server.url}, metrics at {server.metrics_url} "
            f"(repository {repository}, log {server.log_path})"
        )
    else:
        part = envoy = LocalEnvoy(args.workdir, listener_port=args.port, admin_port=args.admin_port)
        banner = f"Envoy routing at {envoy.url} (admin {envoy.admin_url}, log {envoy.log_path})"
    sys.exit(run_in_foreground(part, banner))


if __name__ == "__main__":
    main()
