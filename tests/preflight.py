"""Before the suite: are PostgreSQL and Redis reachable? If not, say how to start them."""

import os
import socket
import sys
from urllib.parse import urlsplit

HOW = {
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "Redis": 'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no',
}


def reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or default_port)
    try:
        with socket.create_connection(address, 3):
            return True
    except OSError:
        return False


def main() -> int:
    checks = [
        ("PostgreSQL", os.environ["DATABASE_URL"], 5432),
        ("Redis", os.environ["CELERY_BROKER_URL"], 6379),
    ]
    down = [(name, url) for name, url, port in checks if not reachable(url, port)]
    for name, url in down:
        print(f"{name} is not reachable at {url}. Start it, for example with:\n  {HOW[name]}\n"
              f"or point {'DATABASE_URL' if name == 'PostgreSQL' else 'CELERY_BROKER_URL'} "
              "at a running server.", file=sys.stderr)
    return 1 if down else 0


if __name__ == "__main__":
    sys.exit(main())
