"""Which Kafka (and which schema registry) this process talks to.

An external cluster when ``PIZZASHOP_KAFKA_BOOTSTRAP`` is set; else the detached local cluster
(``pizzashop broker start [--nodes 3]``) if at least one of its nodes serves; else, for commands
that need one now (the demo), a single local broker owned by this process for its lifetime.

A bootstrap is a comma-separated ``host:port`` list; a local cluster keeps its ports across
restarts, so clients started earlier reconnect by themselves. The replication factor of the
shop's topics follows the cluster: ``ensure_topics`` never goes below the cluster's own
``default.replication.factor`` (3 on a three-node local cluster), and
``topic_replication_factor`` asks for more on an external cluster whose default is lower.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from ingest.broker import LocalKafka, status
from pizzashop.core.errors import ConfigError
from pizzashop.core.settings import Settings


def broker_data_dir(settings: Settings) -> Path:
    return settings.home / "kafka"


def running_bootstrap(settings: Settings) -> str:
    """The bootstrap of a cluster that is already up, or a ConfigError saying how to get one."""
    if settings.kafka_bootstrap:
        return settings.kafka_bootstrap
    state = status(broker_data_dir(settings))
    if state is None:
        raise ConfigError(
            "no Kafka: run `pizzashop broker start` or set PIZZASHOP_KAFKA_BOOTSTRAP=host:port"
        )
    return state.bootstrap


@contextlib.asynccontextmanager
async def kafka(settings: Settings) -> AsyncIterator[str]:
    """A bootstrap address, starting a broker for the duration if none is up."""
    if settings.kafka_bootstrap:
        yield settings.kafka_bootstrap
        return
    state = status(broker_data_dir(settings))
    if state is not None:
        yield state.bootstrap
        return
    async with LocalKafka(
        cache_dir=settings.cache_dir,
        data_dir=broker_data_dir(settings),
        version=settings.broker.kafka_version,
        heap=settings.broker.heap,
        start_timeout_s=settings.broker.start_timeout_s,
    ) as broker:
        yield broker.bootstrap


def registry_dir(settings: Settings) -> Path:
    return settings.home / "schema-registry"


@contextlib.asynccontextmanager
async def schema_registry(settings: Settings) -> AsyncIterator[str]:
    """A schema registry's URL: the configured one, else the detached local one
    (``pizzashop registry start``) if it runs, else a local one for the duration."""
    from ingest.registry import LocalRegistry
    from ingest.registry import status as registry_status

    cfg = settings.schema_registry
    if cfg.url:
        yield cfg.url
        return
    state = registry_status(registry_dir(settings))
    if state is not None:
        yield state.url
        return
    async with LocalRegistry(
        cache_dir=settings.cache_dir,
        log_dir=registry_dir(settings),
        heap=cfg.heap,
        start_timeout_s=cfg.start_timeout_s,
    ) as registry:
        yield registry.url
