"""Loopback ports for the processes this one starts (Kafka, the schema registry, the SMTP sink)."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` nobody listens on right now (the caller's server binds it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Could a server bind ``host:port`` now?

    Probed with SO_REUSEADDR, as the JVM binds its server sockets: the connections a stopped
    broker closed linger in TIME_WAIT on its port for a minute, carrying the flag of its
    listener, and a plain bind() fails on them although Kafka's succeeds. (That plain probe once
    moved a restarted broker to a new port under running clients.) Only a socket that really
    holds the port, a listener above all, makes it taken.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
