"""Ports, and the loopback TCP forwarder a test opens and closes to take Kafka away from a client
(``pizzashop.core.net.TcpProxy``)."""

from __future__ import annotations

import socket

from pizzashop.core.net import TcpProxy

__all__ = ["TcpProxy", "dead_port"]


def dead_port() -> int:
    """A local port nothing listens on (bound and released at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
