"""Exit 0 when the PostgreSQL and Redis URLs given as arguments both accept a connection."""

import socket
import sys
from urllib.parse import urlparse

DEFAULT_PORTS = {"postgres": 5432, "postgresql": 5432, "redis": 6379}


def answers(url: str) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or DEFAULT_PORTS[parsed.scheme]), timeout=2):
            return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(0 if all(answers(url) for url in sys.argv[1:]) else 1)
