"""Loopback ports for the processes this one starts (Kafka, the schema registry, the SMTP sink),
and a TCP forwarder that takes a server away from its clients (fault injection)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` nobody uses right now (the caller's server binds it later).

    Chosen below the kernel's ephemeral range, where connect() never picks a source port: a
    broker node that dies must get its port back, and a port from bind(0) is in that range, so
    any client's connection made while the node is down can take it as its source and keep it
    for a minute in TIME_WAIT (CI once failed to restart a killed node that way).
    """
    ephemeral = _ephemeral_ports()
    if ephemeral.start > _LOWEST_SERVER_PORT:
        for _ in range(200):
            port = _LOWEST_SERVER_PORT + secrets.randbelow(ephemeral.start - _LOWEST_SERVER_PORT)
            if _unused(port, host):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        chosen: int = sock.getsockname()[1]
        return chosen


_LOWEST_SERVER_PORT = 10_000  # clear of the well-known and most registered ports


def _ephemeral_ports() -> range:
    """The kernel's source-port range for outgoing connections (Linux's default if unknown)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32_768, 61_000)


def _unused(port: int, host: str) -> bool:
    """No socket at all on ``port``, not even one lingering in TIME_WAIT."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


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


class TcpProxy:
    """A loopback TCP forwarder to one server; ``close()`` is an outage, ``open()`` ends it.

    Closing cuts every forwarded connection and stops listening, so clients see resets and
    refused connections, as when the server itself goes away; the port stays the same.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            dst.close()
            with contextlib.suppress(Exception):
                await dst.wait_closed()
