"""Free loopback ports for servers the tests start; stdlib only, so any process may import it."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A free loopback port (never 8000 or 8080, which tests must not use)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in (8000, 8080):
            return port
