"""``pizzashop simulate``: labelled traffic for a running shop, and its chargebacks.

Publishes the simulator's orders (``models.simulator``) on the shop's ``orders`` topic, and a
``ChargebackReported`` for each fraudulent one on ``chargebacks``, dated days after the order in
simulated time (the label delay), so ``GET /models`` and the dashboard show drift against
training and online precision and recall within minutes. ``--held-out`` draws the world from
outside the training family (as ``pizzashop evaluate`` does), which is what drift looks like.

It prints (this is CLI output); the records go straight to Kafka, not through the order API.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from pizzashop.core.errors import PizzashopError
from pizzashop.core.settings import Settings


def simulate(
    orders: Annotated[int, typer.Option(min=1, help="orders to publish")] = 2000,
    seed: Annotated[int, typer.Option(help="simulation seed (same seed: same orders)")] = 0,
    held_out: Annotated[
        bool, typer.Option(help="a world from outside the training family (drift)")
    ] = False,
    chargebacks: Annotated[
        bool, typer.Option(help="publish a chargeback for every fraudulent order")
    ] = True,
    min_delay_days: Annotated[float, typer.Option(min=0, help="shortest label delay")] = 3.0,
    max_delay_days: Annotated[float, typer.Option(min=0, help="longest label delay")] = 21.0,
) -> None:
    """Publish simulated, labelled orders to the shop's topics, and their chargebacks."""
    if max_delay_days < min_delay_days:
        raise typer.BadParameter("--max-delay-days is below --min-delay-days")
    delays = (min_delay_days, max_delay_days)
    try:
        sent = asyncio.run(
            publish_simulated(Settings(), orders, seed, held_out, chargebacks, delays)
        )
    except PizzashopError as exc:  # no Kafka, say: one line, exit 1
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(f"published {sent[0]} order(s) and {sent[1]} chargeback(s)")


async def publish_simulated(
    settings: Settings,
    n: int,
    seed: int,
    held_out: bool,
    with_chargebacks: bool,
    delay_days: tuple[float, float],
) -> tuple[int, int]:
    """Publish ``n`` orders of the world ``seed`` and their chargebacks; returns both counts."""
    from ingest.producer import EventProducer
    from ingest.security import client_options
    from ingest.topics import Topics, ensure_topics
    from models._worlds import sample_config
    from models.simulator import chargebacks, simulate
    from pizzashop.app.kafka import running_bootstrap

    config = sample_config(seed, held_out=True) if held_out else None
    stream = simulate(n, seed=seed, config=config)
    reports = chargebacks(stream, seed=seed, delay_days=delay_days) if with_chargebacks else []
    bootstrap = running_bootstrap(settings)
    options = client_options(settings.kafka_security)
    topics = Topics(settings.topic_prefix)
    await ensure_topics(
        bootstrap,
        topics.specs(settings.orders_partitions, settings.events_partitions),
        replication_factor=settings.topic_replication_factor,
        client_options=options,
    )
    async with EventProducer(
        bootstrap, client_id="pizzashop-simulate", client_options=options
    ) as producer:
        await producer.publish_many(topics.orders, stream.orders)
        if reports:
            await producer.publish_many(topics.chargebacks, reports)
    return len(stream.orders), len(reports)


__all__ = ["publish_simulated", "simulate"]
