"""The composition root: settings → database, Kafka clients → services → running tasks.

``Shop`` is the only place that builds clients. Everything is entered on one ``AsyncExitStack``,
so teardown runs in reverse: consumers stop fetching and drain, the outbox relay makes its last
pass, the producer flushes, the database closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from ingest.consumer import ConsumerRuntime, Handler
from ingest.dedupe import ProcessedEvents
from ingest.outbox import OutboxRelay
from ingest.producer import EventProducer
from ingest.topics import Topics, ensure_topics
from pizzashop.database import Database
from pizzashop.errors import ConfigError
from pizzashop.settings import Settings
from services.intake import OrderIntake
from services.kitchen import Kitchen
from services.mailer import Mailer
from services.menu import Menu, load_menu
from services.notification import Notifier
from services.payment import PaymentSaga
from services.scores import ScoreProjection, ScoreQueries
from services.status import StatusProjection, StatusQueries

logger = logging.getLogger(__name__)

CORE_WORKERS = ("status", "payment", "kitchen", "notification")
WORKERS = (*CORE_WORKERS, "scores", "enricher")


@dataclass(frozen=True, slots=True)
class Wiring:
    """Which parts this process runs."""

    api: bool = True
    workers: tuple[str, ...] = WORKERS
    create_topics: bool = True


class Shop:
    def __init__(self, settings: Settings, bootstrap: str, wiring: Wiring = Wiring()) -> None:
        unknown = set(wiring.workers) - set(WORKERS)
        if unknown:
            raise ConfigError(f"unknown worker(s) {sorted(unknown)}; known: {list(WORKERS)}")
        self.settings = settings
        self.bootstrap = bootstrap
        self.wiring = wiring
        self.topics = Topics(settings.topic_prefix)
        self.menu: Menu = load_menu()
        self.db = Database(settings.resolved_database_url)
        self.producer = EventProducer(bootstrap, client_id="pizzashop")
        self.processed = ProcessedEvents(self.db)
        self.queries = StatusQueries(self.db)
        self.scores = ScoreQueries(self.db)
        self.relay = OutboxRelay(self.db, self.producer)
        self.intake = OrderIntake(
            self.db, self.menu, self.topics.orders, on_committed=self.relay.wake
        )
        self.runtimes: dict[str, ConsumerRuntime] = {}
        # The enricher's state stores (feature state, basket history), when it runs here: they
        # start before the consumers and stop after them.
        self.feature_state: Any = None
        self._stores: list[Any] = []
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []

    def _handler(self, name: str) -> tuple[Handler, list[str]]:
        t = self.topics
        if name == "status":
            return StatusProjection(self.db), [t.orders, t.order_events]
        if name == "payment":
            return PaymentSaga(self.db, self.producer, t.order_events), [t.orders, t.order_events]
        if name == "kitchen":
            kitchen = Kitchen(
                self.db, self.producer, t.order_events, self.menu, self.settings.cook_seconds
            )
            return kitchen, [t.orders, t.order_events]
        if name == "notification":
            notifier = Notifier(
                Mailer(self.settings.smtp),
                self.producer,
                self.processed,
                t.order_events,
                consumer_name=self.settings.group("notification"),
            )
            return notifier, [t.orders, t.order_events]
        if name == "scores":
            return ScoreProjection(self.db), [t.enriched]
        if name == "enricher":
            return self._enricher(), [t.orders]
        raise ConfigError(f"unknown worker {name!r}")

    def _enricher(self) -> Handler:
        # Imported here: torch and the models load only in processes that enrich.
        from enrichers.pipeline import ScoringPipeline
        from enrichers.worker import Enricher
        from models.feature_state import SqlFeatureState
        from models.registry import Registry
        from models.upsell.history import SqlBasketHistory

        cfg = self.settings.enricher
        store = SqlFeatureState(self.db.url, engine=self.db.engine)
        registry = Registry(self.settings.resolved_registry_dir)
        options = {
            "timeout_s": cfg.model_timeout_s,
            "prefer_onnx": cfg.prefer_onnx,
            "with_upsell": cfg.with_upsell,
        }
        history = SqlBasketHistory(self.db)
        pipeline = ScoringPipeline(registry, store, history=history, **options)  # type: ignore[arg-type]
        shadow = None
        if cfg.shadow_fraud_version is not None:
            shadow = ScoringPipeline.challenger(
                registry, store, fraud_version=cfg.shadow_fraud_version, **options
            )
        self.feature_state = store
        self._stores += [store, history]
        return Enricher(
            pipeline,
            self.producer,
            self.topics,
            self.menu,
            fraud_threshold=cfg.fraud_threshold,
            reload_every_s=cfg.reload_every_s,
            shadow=shadow,
        )

    async def start(self) -> None:
        stack = self._stack
        await stack.enter_async_context(self.db)
        if self.wiring.create_topics:
            await ensure_topics(
                self.bootstrap,
                self.topics.specs(self.settings.orders_partitions, self.settings.events_partitions),
                replication_factor=self.settings.topic_replication_factor,
            )
        # The producer connects lazily: the API must take orders even while Kafka is away.
        stack.push_async_callback(self.producer.stop)
        for name in self.wiring.workers:
            self.runtimes[name] = self._runtime(name)
        for resource in self._stores:
            await resource.start()
            stack.push_async_callback(resource.stop)
        for runtime in self.runtimes.values():
            # Warm-up (model loading) before the first record, not on it.
            await runtime.handler_start()
        for runtime in self.runtimes.values():
            await stack.enter_async_context(runtime)
        if self.wiring.api:
            self._spawn(self.relay.run(), "outbox-relay", self.relay.stop)
        for name, runtime in self.runtimes.items():
            self._spawn(runtime.run(), f"consumer-{name}", runtime.stop)

    def _runtime(self, name: str) -> ConsumerRuntime:
        handler, topics = self._handler(name)
        return ConsumerRuntime(
            name=name,
            bootstrap=self.bootstrap,
            topics=topics,
            group_id=self.settings.group(name),
            handler=handler,
            producer=self.producer,
            processed=self.processed,
            settings=self.settings.consumer,
        )

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str, stop: Callable[[], None]) -> None:
        """Run ``coro`` until teardown, which calls ``stop`` and waits up to the deadline."""
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(_log_crash)
        self._tasks.append(task)

        async def _stop_and_wait() -> None:
            stop()
            try:
                await asyncio.wait_for(task, self.settings.consumer.shutdown_deadline_s)
            except TimeoutError:
                logger.warning("%s did not stop within the deadline; cancelled", name)
            except Exception:  # already logged by _log_crash
                pass

        self._stack.push_async_callback(_stop_and_wait)

    async def stop(self) -> None:
        await self._stack.aclose()

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def crashed(self) -> Iterable[str]:
        """Names of tasks that ended with an error (they should run until stopped)."""
        return [
            t.get_name() for t in self._tasks if t.done() and not t.cancelled() and t.exception()
        ]


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("%s crashed", task.get_name(), exc_info=task.exception())
