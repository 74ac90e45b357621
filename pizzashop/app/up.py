"""``pizzashop up``: a whole running shop for a developer, on embedded defaults, in one process.

What it starts, in order, and stops in reverse on Ctrl+C (SIGINT) or SIGTERM:

1. the default models, trained into the registry if it has none (``demo.ensure_models``);
2. Kafka: ``PIZZASHOP_KAFKA_BOOTSTRAP`` or the running local cluster if there is one, else a
   local broker owned by this process (data in ``home/kafka``, kept between runs);
3. an SMTP server on ``smtp.host:smtp.port`` that keeps what it receives, one JSON line per
   message in ``home/mail.jsonl`` (``pizzashop mail list`` shows them);
4. the shop: the outbox relay, every worker, and the API with the dashboard and ``/metrics``.

It prints the URLs and a freshly generated API key with the ``inspect`` and ``operate`` scopes
(the dashboard and ``pizzashop dlq``-style operations). It grants no ``place`` scope on purpose:
once any key has it, every order needs a key, and the demo storefront and ``curl`` examples
place orders without one (rate limited per address). The key lives only in this process's
settings: a restart makes a new one. ``pizzashop run`` stays the production entry point, which
expects its broker, mail server and models to exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import SecretStr

from api.app import create_app
from pizzashop.app.demo import ensure_models
from pizzashop.app.kafka import kafka
from pizzashop.app.shop import Shop, Wiring
from pizzashop.core.settings import ApiKey, Settings
from services.mailer import SmtpSink

logger = logging.getLogger(__name__)

UP_KEY_NAME = "up"


def mail_log(settings: Settings) -> Path:
    """Where ``pizzashop up``'s SMTP server writes what it receives."""
    return settings.home / "mail.jsonl"


def read_mail(settings: Settings) -> list[dict[str, Any]]:
    path = mail_log(settings)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def with_fresh_key(settings: Settings) -> tuple[Settings, str]:
    """``settings`` with one more API key (inspect, operate), and that key's secret."""
    secret = secrets.token_urlsafe(24)
    key = ApiKey(
        name=UP_KEY_NAME, secret=SecretStr(secret), scopes=frozenset({"inspect", "operate"})
    )
    api = settings.api.model_copy(update={"keys": (*settings.api.keys, key)})
    return settings.model_copy(update={"api": api}), secret


def api_config(
    app: Any, host: str, port: int, *, log_level: str = "warning", access_log: bool = False
) -> uvicorn.Config:
    """How every entry point serves the API: httptools parses HTTP (uvicorn's pure-Python h11
    parser cost 13% of the order API's profile) and the event loop is uvloop's. uvicorn applies
    ``loop`` only when it creates the loop itself (``Server.run``); a caller that awaits
    ``serve()`` runs it on its own loop, so start that with ``uvloop.run``. No access log by
    default: a log line per order is work on the hot path, and ``/metrics`` already counts and
    times every request."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        lifespan="off",
        http="httptools",
        loop="uvloop",
        # Longer than clients keep an idle connection (httpx: 5 s, uvicorn's default too): the
        # client closes first, so it never sends a request on a connection the server is just
        # closing (the chaos run's load saw 4 such ReadErrors in 20,000 orders, none stored).
        timeout_keep_alive=75,
    )


def tune_gc_for_serving() -> None:
    """Call once the shop has started, before serving: the cycle collector as a server wants it.

    Everything alive then (modules, models, schemas, clients: about 250,000 objects) is moved
    where the cycle collector never looks again, so a full collection, about once a second
    under load, walks only what serving created (some 7,500 objects): measured in the order API
    under load, a full collection paused the event loop 110-200 ms before, with every order in
    flight waiting (the p99).

    The youngest generation is then collected every 10,000 net allocations, not 700: a batch
    builds thousands of short-lived objects (pydantic models, rows, records) that reference
    counting frees anyway, and at 700 each batch ran dozens of collections over them. Measured
    side by side (3 alternating pairs, 2026-12-03): the enricher's CPU per order 0.85-0.90 ->
    0.64-0.69 ms, the kitchen 5,796-6,228 -> 6,309-6,548 orders/s, the order API 1,680 ->
    1,740 orders/s (5 pairs). 50,000 measured the same as 10,000."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


class SignalFreeServer(uvicorn.Server):
    """uvicorn without its own signal handling: the caller's ``stop`` event decides. (uvicorn's
    handlers see a signal beside the event loop's, then raise it once more after serving, which
    the CLI takes for a second Ctrl+C and exits at once.)"""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def run_up(settings: Settings, stop: asyncio.Event, echo: Callable[[str], None]) -> None:
    """Start everything, ``echo`` the URLs and the key, run until ``stop`` is set."""
    settings.home.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(ensure_models, settings)
    settings, secret = with_fresh_key(settings)
    smtp = settings.smtp
    async with (
        kafka(settings) as bootstrap,
        SmtpSink(smtp.host, smtp.port, log_path=mail_log(settings)),
        Shop(settings, bootstrap, Wiring()) as shop,
    ):
        config = api_config(create_app(shop), settings.api_host, settings.api_port)
        tune_gc_for_serving()
        server = SignalFreeServer(config)
        serving = asyncio.ensure_future(server.serve())
        stopping = asyncio.ensure_future(stop.wait())
        # uvicorn's `started` is a plain flag, with no event to wait on.
        while not server.started:
            if serving.done() or stop.is_set():
                break
            await asyncio.sleep(0.05)
        if server.started:
            port = server.servers[0].sockets[0].getsockname()[1]
            base = f"http://{settings.api_host}:{port}"
            echo("pizzashop is up; Ctrl+C stops it all")
            for name, value in (
                ("api", base),
                ("dashboard", f"{base}/dashboard"),
                ("docs", f"{base}/docs"),
                ("metrics", f"{base}/metrics"),
                ("kafka", bootstrap),
                ("smtp", f"{smtp.host}:{smtp.port} (pizzashop mail list)"),
                ("workers", ",".join(shop.runtimes)),
                ("api key", f"{secret} (scopes: inspect, operate; placing needs no key)"),
            ):
                echo(f"  {name:<10} {value}")
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        stopping.cancel()
        await serving
        echo("pizzashop is stopping")
