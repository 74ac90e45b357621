"""Command functions for the ``pizzashop`` CLI (the lead mounts them; see ``app`` below).

They print (this is CLI output), everything else logs. ``--registry`` defaults to the
settings' registry (``PIZZASHOP_REGISTRY_DIR``, else ``<PIZZASHOP_HOME>/registry``).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TextIO

import typer
from pydantic import ValidationError

from ingest.events import OrderPlaced
from models.registry import Aliases, Registry
from pizzashop.core.errors import ConfigError

DEFAULT_REGISTRY: Path | None = None
RegistryOption = Annotated[
    Path | None, typer.Option(help="model registry directory (default: from settings)")
]


def _registry_dir(registry: Path | None) -> Path:
    if registry is not None:
        return registry
    from pizzashop.core.settings import Settings

    return Settings().resolved_registry_dir


def train(
    registry: RegistryOption = DEFAULT_REGISTRY,
    n_orders: Annotated[
        int | None,
        typer.Option(
            help="simulated orders over a family of worlds, 10,000 each (60% train, 15% "
            "validation); default: models.training.DEFAULT_ORDERS (100,000)"
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="simulation and training seed")] = 0,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    target_false_hold_rate: Annotated[
        float | None,
        typer.Option(
            min=0.0001,
            max=0.5,
            help="share of legitimate validation orders the fraud hold may catch "
            "(default: enricher.target_false_hold_rate)",
        ),
    ] = None,
) -> None:
    """Simulate traffic, train fraud + anomaly (+ upsell) and publish new registry versions.

    The fraud version records the hold threshold chosen for the target false-hold rate."""
    from models.training import DEFAULT_ORDERS
    from models.training import train as run
    from pizzashop.core.settings import Settings

    if target_false_hold_rate is None:
        target_false_hold_rate = Settings().enricher.target_false_hold_rate
    report = run(
        _registry_dir(registry),
        n_orders=n_orders or DEFAULT_ORDERS,
        seed=seed,
        progress=progress,
        target_false_hold_rate=target_false_hold_rate,
    )
    for name, tag in report.versions.items():
        typer.echo(f"{name}: {tag} ({report.seconds.get(name, 0.0):.1f}s)")
    for name, why in report.skipped.items():
        typer.echo(f"{name}: skipped ({why})")


def evaluate(
    registry: RegistryOption = DEFAULT_REGISTRY,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    n_orders: Annotated[int | None, typer.Option(help="default: as trained")] = None,
    seed: Annotated[int | None, typer.Option(help="default: as trained")] = None,
    extended: Annotated[
        bool,
        typer.Option(
            "--extended",
            help="add leave-one-scenario-out and feature-group ablations (retrains, minutes)",
        ),
    ] = False,
) -> None:
    """Metrics of the latest models in distribution (the held-out later period of the training
    worlds: ``fraud``, ``hold``, ``anomaly``, ``upsell``) and on simulated worlds held out from
    training (``held_out``: PR-AUC over the Bayes-optimal PR-AUC per world, the hold policy's
    recall per scenario there).

    ``hold`` is the fraud version's hold policy: the false-hold rate it achieves and recall per
    fraud scenario (``recall_<scenario>``, ``recall_p80_<scenario>`` for the orders whose true
    fraud probability is 0.8 or more)."""
    from models.evaluation import evaluate as run

    report = run(_registry_dir(registry), n_orders=n_orders, seed=seed, extended=extended)
    if as_json:
        typer.echo(json.dumps(report, sort_keys=True))
        return
    for group, metrics in report.items():
        for key, value in metrics.items():
            typer.echo(f"{group}.{key} = {value:.4f}")


def list_models(registry: RegistryOption = DEFAULT_REGISTRY) -> None:
    """Every model version in the registry, oldest first, with its aliases (the champion the
    workers serve, the challenger they shadow)."""
    found = Registry(_registry_dir(registry))
    champions = {name: found.champion(name) for name in found.names()}
    challengers = {name: found.challenger(name) for name in found.names()}
    for mv in found.list():
        meta = mv.metadata
        metrics = " ".join(f"{k}={v:.4f}" for k, v in sorted(meta.metrics.items()))
        marks = [
            alias
            for alias, holder in (("champion", champions), ("challenger", challengers))
            if holder.get(meta.name) == meta.version
        ]
        typer.echo(
            f"{meta.tag}\t{meta.created_at}\tfeatures-v{meta.feature_schema_version}\t"
            f"{meta.training_data_hash}\t{metrics}\t{','.join(marks) or '-'}"
        )


ModelName = Annotated[str, typer.Argument(help="model name, e.g. fraud, anomaly, upsell")]
VersionArg = Annotated[int, typer.Argument(min=1, help="registry version number")]


def _describe(name: str, aliases: Aliases, registry: Registry) -> str:
    champion = (
        f"v{aliases.champion}"
        if aliases.champion is not None
        else f"latest (v{registry.champion(name)})"
    )
    challenger = f"v{aliases.challenger}" if aliases.challenger is not None else "none"
    return f"{name}: champion {champion}, challenger {challenger}"


def _change(what: str, run: Callable[[Registry], tuple[str, Aliases]], path: Path | None) -> None:
    """Run one alias change; a bad model or version is one line on stderr and exit code 1."""
    found = Registry(_registry_dir(path))
    try:
        name, aliases = run(found)
    except ConfigError as exc:
        typer.echo(f"error: {what}: {exc}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(_describe(name, aliases, found))


def promote(
    name: ModelName, version: VersionArg, registry: RegistryOption = DEFAULT_REGISTRY
) -> None:
    """Make VERSION the champion of NAME. Running enrichment workers score with it from their
    next reload (enricher.reload_every_s), no restart; `rollback` restores the one before."""
    _change("promote", lambda r: (name, r.promote(name, version)), registry)


def rollback(name: ModelName, registry: RegistryOption = DEFAULT_REGISTRY) -> None:
    """Restore the champion NAME had before its last promotion (before the first: the latest
    version). Running workers apply it from their next reload."""
    _change("rollback", lambda r: (name, r.rollback(name)), registry)


def shadow(
    name: ModelName,
    version: Annotated[
        int | None, typer.Argument(min=1, help="version to shadow (omit with --clear)")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="stop shadowing NAME")] = False,
    registry: RegistryOption = DEFAULT_REGISTRY,
) -> None:
    """Score VERSION of NAME as the challenger beside the champion on running workers: its
    scores go out as ScoreShadowed and decide nothing. --clear stops it."""
    if clear == (version is not None):
        typer.echo("error: shadow: give a VERSION or --clear, not both or neither", err=True)
        raise typer.Exit(code=2)
    _change("shadow", lambda r: (name, r.shadow(name, None if clear else version)), registry)


def score(
    input: Annotated[Path, typer.Option("--input", help="OrderPlaced JSON lines, or - ")],
    output: Annotated[Path, typer.Option("--output", help="scores JSON lines, or -")],
    registry: RegistryOption = DEFAULT_REGISTRY,
    batch_size: Annotated[int, typer.Option(min=1)] = 100,
) -> None:
    """Score orders in file order with in-memory feature state, through the enrichment
    worker's own code: each output line is the ``OrderEnriched`` a worker would publish.
    Bad lines are reported on stderr by line number and skipped; exit code 1 if any."""
    source = sys.stdin if str(input) == "-" else input.open()
    sink = sys.stdout if str(output) == "-" else output.open("w")
    try:
        bad = asyncio.run(score_lines(source, sink, Registry(_registry_dir(registry)), batch_size))
    finally:
        if source is not sys.stdin:
            source.close()
        if sink is not sys.stdout:
            sink.close()
    if bad:
        typer.echo(f"{bad} line(s) skipped", err=True)
        raise typer.Exit(code=1)


async def score_lines(
    source: TextIO, sink: TextIO, registry: Registry, batch_size: int = 100
) -> int:
    """The body of ``score``: returns the number of bad lines."""
    from enrichers.pipeline import ScoringPipeline
    from enrichers.worker import hold_threshold, to_enriched
    from models.feature_state import InMemoryFeatureState
    from models.upsell.history import InMemoryBasketHistory
    from pizzashop.core.menu import load_menu
    from pizzashop.core.settings import Settings

    menu = load_menu()
    pipeline = ScoringPipeline(registry, InMemoryFeatureState(), history=InMemoryBasketHistory())
    await pipeline.start()
    # As the enricher: the setting if set, else the fraud version's recorded threshold.
    threshold = hold_threshold(pipeline, Settings().enricher.fraud_threshold)
    bad = 0
    batch: list[tuple[int, OrderPlaced]] = []

    async def flush() -> None:
        scores = await pipeline.score_batch([order for _, order in batch])
        for (line_no, order), result in zip(batch, scores, strict=True):
            enriched = to_enriched(order, result, menu, threshold)
            sink.write(json.dumps({"line": line_no, **enriched.model_dump(mode="json")}) + "\n")
        batch.clear()

    for line_no, line in enumerate(source, start=1):
        if not line.strip():
            continue
        try:
            batch.append((line_no, OrderPlaced.model_validate_json(line)))
        except ValidationError as exc:
            bad += 1
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "body"
            typer.echo(
                f"line {line_no}: not a valid OrderPlaced ({where}: {first['msg']})", err=True
            )
            continue
        if len(batch) >= batch_size:
            await flush()
    if batch:
        await flush()
    return bad


app = typer.Typer(
    help="Models: train, evaluate, list, score, promote, rollback, shadow.", no_args_is_help=True
)
app.command("train")(train)
app.command("evaluate")(evaluate)
app.command("list")(list_models)
app.command("score")(score)
app.command("promote")(promote)
app.command("rollback")(rollback)
app.command("shadow")(shadow)

__all__ = [
    "app",
    "evaluate",
    "list_models",
    "promote",
    "rollback",
    "score",
    "score_lines",
    "shadow",
    "train",
]
