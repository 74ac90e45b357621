"""Prometheus metrics: what the shop is doing, read from the state it already keeps.

Nothing here counts on the hot path of a consumer. ``ShopMetrics`` is a custom collector that,
on each scrape, reads:

* each consumer runtime's ``ConsumerStats`` (records handled, retried, dead-lettered, deferred,
  duplicates, errors by class, batches, commits) — counters of this process;
* the outbox relay's ``state`` and ``backlog()`` (rows waiting, age of the oldest);
* the consumer lag, from the broker: per group, topic and partition, the topic's end offset
  (read_committed, the last stable offset) minus the group's committed offset (the start of the
  log when the group has none). It is the broker's view, so it is right for groups whose
  workers run in other processes or are stopped — it rises while they are down. A
  transactional producer leaves a commit marker after its records, which no consumer commits
  past, so an idle group may show a lag of one per partition written transactionally.

The lag and the backlog need I/O: ``refresh()`` reads them (the API calls it before rendering
``/metrics``; a worker process's metrics port, served from a thread, shows the last
``run_refresher()`` pass). ``RequestMetrics`` (ASGI middleware) times API requests by route
template and status; ``observe_score()`` feeds the score distributions per model version.
The models' drift and online precision/recall gauges are ``api.model_monitor``'s, registered on
the same registry.

Every name starts with ``pizzashop_``; ``METRIC_NAMES`` lists them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette import types as asgi

from api.model_monitor import METRIC_NAMES as MODEL_METRIC_NAMES
from ingest.events import OrderEnriched
from ingest.flows import FLOWS
from ingest.outbox import Backlog, OutboxRelay
from ingest.runtime import ConsumerRuntime
from ingest.topics import Topics
from pizzashop.core.settings import Settings

__all__ = [
    "CONTENT_TYPE",
    "METRIC_NAMES",
    "PartitionLag",
    "RequestMetrics",
    "ShopMetrics",
    "consumer_lag",
    "flow_groups",
]

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: ConsumerStats field -> (metric name, help). Counters, labelled by flow and group.
_STAT_COUNTERS = {
    "handled": ("pizzashop_records_handled", "records whose handling was committed"),
    "retries": ("pizzashop_records_retried", "retries of records that failed retriably"),
    "dead_lettered": ("pizzashop_records_dead_lettered", "records sent to a dead-letter topic"),
    "deferred": ("pizzashop_records_deferred", "records held back until they are due"),
    "duplicates": ("pizzashop_records_duplicate", "records dropped as already handled"),
    "skipped": ("pizzashop_records_skipped", "replayed records meant for another group"),
    "batches": ("pizzashop_consumer_batches", "batches dispatched to the handler"),
    "commits": ("pizzashop_consumer_commits", "offset commits (transactions) completed"),
}

METRIC_NAMES = (
    "pizzashop_consumer_lag",
    *(name for name, _ in _STAT_COUNTERS.values()),
    "pizzashop_consumer_records_per_batch",
    "pizzashop_consumer_errors",
    "pizzashop_consumer_lag_probe_errors",
    "pizzashop_outbox_backlog",
    "pizzashop_outbox_oldest_age_seconds",
    "pizzashop_outbox_published",
    "pizzashop_outbox_failures",
    "pizzashop_outbox_relay_leader",
    "pizzashop_http_request_duration_seconds",
    "pizzashop_score",
    "pizzashop_model_latency_seconds",
    "pizzashop_scores_degraded",
    "pizzashop_orders_flagged",
    *MODEL_METRIC_NAMES,
)


@dataclass(frozen=True, slots=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    end: int
    committed: int  # the log's start when the group has committed nothing there

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)


async def consumer_lag(
    bootstrap: str,
    groups: Mapping[str, Sequence[str]],
    *,
    timeout_s: float = 5.0,
    client_options: Mapping[str, object] | None = None,
) -> list[PartitionLag]:
    """The lag of each group (``group -> topics``) on every partition of its topics, from the
    broker: end offsets (read_committed) minus the group's committed offsets. Topics that do not
    exist yet are left out. Short-lived clients: nothing stays open between scrapes."""
    options = dict(client_options or {})
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="pizzashop-metrics",
        request_timeout_ms=int(timeout_s * 1000),
        **options,
    )
    try:
        await admin.start()
        # Built only once the broker answered: a consumer never started still warns unclosed.
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            client_id="pizzashop-metrics",
            request_timeout_ms=int(timeout_s * 1000),
            **options,
        )
        try:
            await consumer.start()
            return await asyncio.wait_for(_lag(admin, consumer, groups), timeout_s)
        finally:
            await consumer.stop()
    finally:
        await admin.close()


async def _lag(
    admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, groups: Mapping[str, Sequence[str]]
) -> list[PartitionLag]:
    wanted = sorted({t for topics in groups.values() for t in topics})
    partitions: dict[str, list[int]] = {}
    for described in await admin.describe_topics(wanted):
        if described.get("error_code", 0) == 0 and described.get("partitions"):
            partitions[described["topic"]] = sorted(p["partition"] for p in described["partitions"])
    tps = [TopicPartition(t, p) for t, ps in partitions.items() for p in ps]
    if not tps:
        return []
    ends = await consumer.end_offsets(tps)
    starts = await consumer.beginning_offsets(tps)
    lags: list[PartitionLag] = []
    for group, topics in sorted(groups.items()):
        try:
            committed = await admin.list_consumer_group_offsets(group)
        except KafkaError as exc:
            # A group that has never joined may have no coordinator yet: leave it out this
            # time rather than lose every other group's lag.
            logger.info("metrics: no offsets for group %s: %r", group, exc)
            continue
        for tp in tps:
            if tp.topic not in topics:
                continue
            meta = committed.get(tp)
            if meta is not None and meta.offset >= 0:
                lags.append(PartitionLag(group, tp.topic, tp.partition, ends[tp], meta.offset))
            else:
                # No commit: the group starts at the beginning of the log (auto_offset_reset).
                lags.append(PartitionLag(group, tp.topic, tp.partition, ends[tp], starts[tp]))
    return lags


@dataclass(slots=True)
class _Snapshot:
    lag: list[PartitionLag] = field(default_factory=list)
    backlog: Backlog | None = None
    refreshed_at: float = 0.0


class ShopMetrics(Collector):
    """The shop's metrics registry. ``runtimes`` maps flow name to its runtime in this process;
    ``lag_groups`` maps each consumer group to watch to its topics (every registered flow's, so
    a group whose worker is elsewhere, or down, is seen too)."""

    def __init__(
        self,
        *,
        runtimes: Callable[[], Mapping[str, ConsumerRuntime]] = dict,
        relay: OutboxRelay | None = None,
        bootstrap: str | None = None,
        lag_groups: Mapping[str, Sequence[str]] | None = None,
        client_options: Mapping[str, object] | None = None,
        min_refresh_s: float = 1.0,
        lag_timeout_s: float = 5.0,
    ) -> None:
        self._runtimes = runtimes
        self._relay = relay
        self._bootstrap = bootstrap
        self._lag_groups = dict(lag_groups or {})
        self._client_options = dict(client_options or {})
        self._min_refresh_s = min_refresh_s
        self._lag_timeout_s = lag_timeout_s
        self._snapshot = _Snapshot()
        self._refreshing = asyncio.Lock()
        self._probe_errors = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self.requests = Histogram(
            "pizzashop_http_request_duration_seconds",
            "API request latency by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self._score = Histogram(
            "pizzashop_score",
            "scores the API saw, per model and version (fraud: probability; anomaly: "
            "percentile / 100; upsell: the first suggestion's ranker score)",
            ["model", "version"],
            buckets=(0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
            registry=self.registry,
        )
        self._model_latency = Histogram(
            "pizzashop_model_latency_seconds",
            "time a model took for the batch an order was scored in, per model and version",
            ["model", "version"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self._degraded = Counter(
            "pizzashop_scores_degraded", "degraded scores the API saw", ["model"],
            registry=self.registry,
        )  # fmt: skip
        self._flagged = Counter(
            "pizzashop_orders_flagged", "flagged orders the API saw", registry=self.registry
        )

    # -- I/O ---------------------------------------------------------------------------------
    @property
    def lag(self) -> list[PartitionLag]:
        """The last lag read from the broker (``refresh()``)."""
        return list(self._snapshot.lag)

    async def refresh(self, *, force: bool = False) -> None:
        """Read the lag from the broker and the outbox backlog from the database, at most once
        per ``min_refresh_s`` (concurrent scrapes share one read). A failure keeps the last
        values and counts in ``pizzashop_consumer_lag_probe_errors``."""
        async with self._refreshing:
            now = time.monotonic()
            if not force and now - self._snapshot.refreshed_at < self._min_refresh_s:
                return
            snapshot = _Snapshot(self._snapshot.lag, self._snapshot.backlog, now)
            if self._bootstrap and self._lag_groups:
                try:
                    snapshot.lag = await consumer_lag(
                        self._bootstrap,
                        self._lag_groups,
                        timeout_s=self._lag_timeout_s,
                        client_options=self._client_options,
                    )
                except Exception as exc:
                    self._probe_errors += 1
                    logger.warning("metrics: reading consumer lag failed: %r", exc)
            if self._relay is not None:
                try:
                    snapshot.backlog = await self._relay.backlog()
                except Exception as exc:
                    logger.warning("metrics: reading the outbox backlog failed: %r", exc)
            self._snapshot = snapshot

    async def run_refresher(self, every_s: float, stop: asyncio.Event) -> None:
        """Refresh every ``every_s`` until ``stop`` is set (for a metrics port served from a
        thread, which cannot wait on the event loop)."""
        while not stop.is_set():
            await self.refresh(force=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe_score(self, enriched: OrderEnriched) -> None:
        """Feed one enriched order into the score distributions (each order once)."""
        parts = [
            ("fraud", enriched.fraud.lineage, enriched.fraud.probability, enriched.fraud.degraded),
            (
                "anomaly",
                enriched.anomaly.lineage,
                None if enriched.anomaly.percentile is None else enriched.anomaly.percentile / 100,
                enriched.anomaly.degraded,
            ),
        ]
        upsell = enriched.upsell
        if upsell is not None:
            top = upsell.suggestions[0].score if upsell.suggestions else None
            parts.append(("upsell", upsell.lineage, top, upsell.degraded))
        for model, lineage, value, degraded in parts:
            if degraded:
                self._degraded.labels(model).inc()
            if lineage is None:
                continue
            version = str(lineage.version)
            if value is not None:
                self._score.labels(model, version).observe(value)
            self._model_latency.labels(model, version).observe(lineage.latency_ms / 1000)
        if enriched.flagged:
            self._flagged.inc()

    def dead_lettered(self) -> int:
        """Records this process's consumers have dead-lettered."""
        return sum(r.stats.dead_lettered for r in self._runtimes().values())

    # -- the collector -----------------------------------------------------------------------
    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._consumer_metrics()
        yield from self._lag_metrics()
        yield from self._outbox_metrics()

    def _consumer_metrics(self) -> Iterator[Metric]:
        runtimes = self._runtimes()
        labels = ["flow", "group"]
        for attr, (name, doc) in _STAT_COUNTERS.items():
            family = CounterMetricFamily(name, doc, labels=labels)
            for flow, runtime in sorted(runtimes.items()):
                family.add_metric([flow, runtime.group_id], getattr(runtime.stats, attr))
            yield family
        per_batch = GaugeMetricFamily(
            "pizzashop_consumer_records_per_batch",
            "mean records handled per batch since start",
            labels=labels,
        )
        errors = CounterMetricFamily(
            "pizzashop_consumer_errors",
            "handling failures by error class (each retry and each dead letter counts)",
            labels=[*labels, "error_class"],
        )
        for flow, runtime in sorted(runtimes.items()):
            stats = runtime.stats
            mean = stats.handled / stats.batches if stats.batches else 0.0
            per_batch.add_metric([flow, runtime.group_id], mean)
            for error_class, count in sorted(stats.errors_by_class.items()):
                errors.add_metric([flow, runtime.group_id, error_class], count)
        yield per_batch
        yield errors
        for attr, name, doc in (
            ("handle_seconds", "pizzashop_handler_duration_seconds", "seconds per handler call"),
            ("batch_sizes", "pizzashop_handler_batch_size", "deliveries per handler call"),
        ):
            histogram = HistogramMetricFamily(name, doc, labels=labels)
            for flow, runtime in sorted(runtimes.items()):
                buckets = getattr(runtime.stats, attr)
                cumulative, running = [], 0
                for bound, count in zip(buckets.bounds, buckets.counts, strict=True):
                    running += count
                    cumulative.append((repr(float(bound)), running))
                cumulative.append(("+Inf", buckets.count))
                histogram.add_metric(
                    [flow, runtime.group_id], buckets=cumulative, sum_value=buckets.total
                )
            yield histogram

    def _lag_metrics(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "pizzashop_consumer_lag",
            "records on the broker a group has not committed yet (end offset - committed)",
            labels=["group", "topic", "partition"],
        )
        for p in self._snapshot.lag:
            lag.add_metric([p.group, p.topic, str(p.partition)], p.lag)
        yield lag
        yield CounterMetricFamily(
            "pizzashop_consumer_lag_probe_errors",
            "failed reads of the consumer lag from the broker",
            value=self._probe_errors,
        )

    def _outbox_metrics(self) -> Iterator[Metric]:
        if self._relay is None:
            return
        state = self._relay.state
        backlog = self._snapshot.backlog
        yield GaugeMetricFamily(
            "pizzashop_outbox_backlog",
            "outbox rows not yet published",
            value=backlog.pending if backlog is not None else float("nan"),
        )
        yield GaugeMetricFamily(
            "pizzashop_outbox_oldest_age_seconds",
            "how long the oldest unpublished outbox row has waited (0 when none waits)",
            value=(backlog.oldest_age_s or 0.0) if backlog is not None else float("nan"),
        )
        yield CounterMetricFamily(
            "pizzashop_outbox_published", "outbox rows published", value=state.published
        )
        yield CounterMetricFamily(
            "pizzashop_outbox_failures", "failed relay passes", value=state.failures
        )
        yield GaugeMetricFamily(
            "pizzashop_outbox_relay_leader",
            "1 while this process's relay holds the lease (publishes)",
            value=1.0 if state.has_lease else 0.0,
        )


class RequestMetrics:
    """ASGI middleware: the latency of each HTTP request by method, route template (never the
    raw path, so an order id is not a label) and status. Streams (``skip``) are not timed."""

    def __init__(
        self, app: asgi.ASGIApp, metrics: ShopMetrics, skip: frozenset[str] = frozenset()
    ) -> None:
        self._app = app
        self._metrics = metrics
        self._skip = skip

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: asgi.Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            if route not in self._skip:
                self._metrics.requests.labels(scope["method"], route, str(status)).observe(
                    time.perf_counter() - started
                )


def flow_groups(settings: Settings) -> dict[str, list[str]]:
    """Every registered flow's consumer group and the topics it reads (the flows a process has
    imported: the composition root imports them all before the API is built)."""
    topics = Topics(settings.topic_prefix)
    return {
        settings.group(spec.name): [topics.name(t) for t in spec.topics] for spec in FLOWS.values()
    }
