"""The composition root: settings → database, Kafka clients → flows → running tasks.

``Shop`` is the only place that builds clients. Everything is entered on one ``AsyncExitStack``,
so teardown runs in reverse: consumers stop fetching and drain, the outbox relay makes its last
pass, the producer flushes, the database closes.

Flows declare themselves (``ingest.flows.flow``) in the modules listed in ``FLOW_MODULES``;
adding a flow is writing its module and naming it there.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import uuid
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka.errors import KafkaError

from ingest.codec import PLAIN_JSON, Serializer, install_schema_source
from ingest.confluent_transport import ConfluentTransport
from ingest.dedupe import ProcessedEvents
from ingest.flows import FLOWS, Flow, FlowContext
from ingest.kafka_transport import KafkaTransport
from ingest.outbox import KafkaOutboxTransport, OutboxRelay
from ingest.producer import EventProducer
from ingest.registry import RegistryClient, RegistrySerializer, shop_subjects
from ingest.runtime import ConsumerRuntime
from ingest.schemas.publications import published_pairs
from ingest.security import check_credentials, client_options, librdkafka_options
from ingest.topics import Topics, ensure_topics
from pizzashop.app.tracing import setup_tracing
from pizzashop.core.database import Database
from pizzashop.core.errors import BrokerUnavailable, ConfigError
from pizzashop.core.lifecycle import Resource
from pizzashop.core.menu import Menu, load_menu
from pizzashop.core.settings import Settings
from services.intake import OrderIntake
from services.labels import LabelQueries
from services.scores import ScoreQueries
from services.status import StatusQueries

logger = logging.getLogger(__name__)

#: The modules whose ``@flow`` declarations make up the shop.
FLOW_MODULES = (
    "services.status",
    "services.payment",
    "services.kitchen",
    "services.notification",
    "services.scores",
    "services.labels",
    "enrichers.flow",
)


def registered_flows() -> dict[str, Flow]:
    for module in FLOW_MODULES:
        importlib.import_module(module)
    return dict(FLOWS)


@dataclass(frozen=True, slots=True)
class Wiring:
    """Which parts this process runs; ``workers=None`` means every registered flow."""

    api: bool = True
    workers: tuple[str, ...] | None = None
    create_topics: bool = True


class Shop(Resource):
    """The running shop. ``start()`` builds and starts everything on one exit stack (a failed
    start unwinds what it had started); ``stop()`` unwinds it in reverse."""

    def __init__(self, settings: Settings, bootstrap: str, wiring: Wiring = Wiring()) -> None:
        flows = registered_flows()
        chosen = tuple(flows) if wiring.workers is None else wiring.workers
        unknown = set(chosen) - set(flows)
        if unknown:
            raise ConfigError(f"unknown worker(s) {sorted(unknown)}; known: {sorted(flows)}")
        self.settings = settings
        self.bootstrap = bootstrap
        self.wiring = wiring
        self.flows = [flows[name] for name in chosen]
        self.topics = Topics(settings.topic_prefix)
        self.menu: Menu = load_menu()
        self.db = Database(settings.resolved_database_url)
        # Every Kafka client this shop makes authenticates the same way (ingest.security).
        self.client_options = client_options(settings.kafka_security)
        self.producer = EventProducer(
            bootstrap, client_id="pizzashop", client_options=self.client_options
        )
        self.processed = ProcessedEvents(self.db)
        self.queries = StatusQueries(self.db)
        self.scores = ScoreQueries(self.db)
        self.labels = LabelQueries(self.db)
        outbox = settings.outbox
        self.relay = OutboxRelay(
            self.db,
            KafkaOutboxTransport(
                bootstrap,
                transactional_id=f"{settings.group_prefix}.outbox-relay",
                progress_topic=self.topics.name("outbox-progress"),
                request_timeout_ms=outbox.request_timeout_ms,
                replication_factor=settings.topic_replication_factor,
                progress_window=outbox.progress_window,
                client_options=self.client_options,
            ),
            settings=outbox,
        )
        self.serializer, self.registry_client = _serializer(settings)
        self.intake = OrderIntake(
            self.db,
            self.menu,
            self.topics.orders,
            on_committed=self.relay.wake,
            serializer=self.serializer,
        )
        self.runtimes: dict[str, ConsumerRuntime] = {}
        #: What each flow's factory built beside its handler (state stores), by flow name.
        self.resources: dict[str, list[Any]] = {}
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []

    async def _start(self) -> None:
        stack = self._stack
        provider = setup_tracing(self.settings.tracing)
        if provider is not None:  # installed by this shop: its last spans go out at the end
            stack.push_async_callback(asyncio.to_thread, provider.force_flush)
        await stack.enter_async_context(self.db)
        if isinstance(self.serializer, RegistrySerializer):
            await self._register_schemas(self.serializer)
        await check_credentials(self.bootstrap, self.client_options)  # a refusal is final
        if self.wiring.create_topics:
            await self._create_topics()
        # No network yet: the producer connects on its first send, so the API takes orders
        # even while Kafka is away.
        await stack.enter_async_context(self.producer)
        for spec in self.flows:
            runtime = self._runtime(spec)
            for resource in self.resources[spec.name]:
                await stack.enter_async_context(resource)
            # Warm-up (model loading) before the first record, not on it. Nothing comes
            # between it and the runtime's entry on the stack, and the runtime's stop (also
            # the undo of its failed start) stops a started handler.
            await runtime.handler_start()
            await stack.enter_async_context(runtime)
            self.runtimes[spec.name] = runtime
        if self.wiring.api:
            self._spawn(self.relay.run(), "outbox-relay", self.relay.request_stop)
        for name, runtime in self.runtimes.items():
            self._spawn(runtime.run(), f"consumer-{name}", runtime.request_stop)

    async def _create_topics(self) -> None:
        """Create the shop's topics once Kafka answers. A process that runs flows waits for it
        (a worker started during a broker outage), up to ``kafka_start_wait_s``; one that only
        serves the API goes on without: it takes orders while Kafka is away."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.kafka_start_wait_s
        delay = 0.5
        while True:
            try:
                await ensure_topics(
                    self.bootstrap,
                    self.topics.specs(
                        self.settings.orders_partitions, self.settings.events_partitions
                    ),
                    replication_factor=self.settings.topic_replication_factor,
                    client_options=self.client_options,
                )
                return
            except (BrokerUnavailable, KafkaError, OSError) as exc:
                if not self.flows:
                    logger.warning("Kafka at %s is away (%r); serving anyway", self.bootstrap, exc)
                    return
                if loop.time() + delay > deadline:
                    raise BrokerUnavailable(
                        f"Kafka at {self.bootstrap} did not answer within "
                        f"{self.settings.kafka_start_wait_s:.0f}s: {exc!r}"
                    ) from exc
                logger.warning("Kafka at %s is away (%r); waiting", self.bootstrap, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _register_schemas(self, serializer: RegistrySerializer) -> None:
        """Register what the shop publishes (an incompatible change refuses to start) and let
        decoding check framed records against the registry's schemas."""
        if self.registry_client is not None:
            self._stack.callback(self.registry_client.close)
        install_schema_source(serializer)
        self._stack.callback(install_schema_source, None)
        await serializer.prepare(published_pairs(self.topics))
        await serializer.warm([subject for subject, _ in shop_subjects(self.topics)])

    def _runtime(self, spec: Flow) -> ConsumerRuntime:
        ctx = FlowContext(
            self.settings,
            self.db,
            self.topics,
            self.processed,
            bootstrap=self.bootstrap,
            client_options=self.client_options,
        )
        handler = spec.build(ctx)
        self.resources[spec.name] = ctx.resources
        group = self.settings.group(spec.name)
        cfg = self.settings.consumer
        instance = cfg.instance_id or uuid.uuid4().hex[:12]
        # The client under the runtime; both are exactly-once by transactions.
        transport_class = KafkaTransport if cfg.transport == "aiokafka" else ConfluentTransport
        # librdkafka names the same security settings its own way.
        options = (
            self.client_options
            if transport_class is KafkaTransport
            else librdkafka_options(self.settings.kafka_security)
        )
        transport = transport_class(
            bootstrap=self.bootstrap,
            group_id=group,
            client_id=f"pizzashop-{spec.name}",
            transactional_id=f"{group}.{instance}",
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            max_poll_interval_ms=cfg.max_poll_interval_ms,
            transaction_timeout_ms=cfg.transaction_timeout_ms,
            client_options=options,
        )
        return ConsumerRuntime(
            name=spec.name,
            group_id=group,
            topics=[self.topics.name(t) for t in spec.topics],
            handler=handler,
            transport=transport,
            processed=self.processed if spec.dedupe else None,
            settings=cfg,
            serializer=self.serializer,
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

    async def _stop(self) -> None:
        await self._stack.aclose()

    def crashed(self) -> Iterable[str]:
        """Names of tasks that ended with an error (they should run until stopped)."""
        return [
            t.get_name() for t in self._tasks if t.done() and not t.cancelled() and t.exception()
        ]


def _serializer(settings: Settings) -> tuple[Serializer, RegistryClient | None]:
    """Registry-framed events when a schema registry is configured, plain JSON otherwise."""
    cfg = settings.schema_registry
    if not cfg.url:
        return PLAIN_JSON, None
    client = RegistryClient(
        cfg.url,
        username=cfg.username,
        password=cfg.password.get_secret_value() if cfg.password else None,
        timeout_s=cfg.timeout_s,
    )
    return RegistrySerializer(client, compatibility=cfg.compatibility), client


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("%s crashed", task.get_name(), exc_info=task.exception())
