"""The ``pizzashop`` command: the one entry point. Configures logging; everything else logs."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
import uvloop

from pizzashop.app import model_commands, simulate_command
from pizzashop.core.errors import PizzashopError
from pizzashop.core.settings import Settings

if TYPE_CHECKING:
    from pathlib import Path

    from ingest.dlq import LetterFilter
    from ingest.registry import RegistryClient
    from pizzashop.app.shop import Shop

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
broker_app = typer.Typer(no_args_is_help=True, help="The local Apache Kafka broker.")
dlq_app = typer.Typer(no_args_is_help=True, help="Dead letters: inspect and replay.")
models_app = typer.Typer(no_args_is_help=True, help="The model registry.")
app.add_typer(broker_app, name="broker")
app.add_typer(dlq_app, name="dlq")
app.add_typer(models_app, name="models")
db_app = typer.Typer(no_args_is_help=True, help="The database schema: migrations.")
app.add_typer(db_app, name="db")
app.command("train")(model_commands.train)
app.command("evaluate")(model_commands.evaluate)
app.command("score")(model_commands.score)
models_app.command("list")(model_commands.list_models)
models_app.command("promote")(model_commands.promote)
models_app.command("rollback")(model_commands.rollback)
models_app.command("shadow")(model_commands.shadow)
app.command("simulate")(simulate_command.simulate)

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="log at INFO")]


def _setup(verbose: bool = False) -> Settings:
    from pizzashop.core.pii import EmailMaskingFilter

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # No log line carries an e-mail address: mask on every root handler (records of every
    # logger that propagates) and on uvicorn's loggers, which get handlers of their own later
    # (logging.config keeps a logger's filters).
    masking = EmailMaskingFilter()
    for handler in logging.getLogger().handlers:
        handler.addFilter(masking)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(masking)
    if not verbose:
        # aiokafka logs the group coordinator's normal start-up retries at ERROR.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    return Settings()


def _client_options(settings: Settings) -> dict[str, Any]:
    """The Kafka security options every client of this command takes (SASL, TLS)."""
    from ingest.security import client_options

    return client_options(settings.kafka_security)


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code=1)


# -- broker ---------------------------------------------------------------------------------
@broker_app.command("start")
def broker_start(
    nodes: Annotated[
        int | None,
        typer.Option(help="1, 3 or 5 local nodes (default: what the data dir already has, else 1)"),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Start the local Kafka (KRaft) in the background, on the ports it had before; print its
    bootstrap. Nodes already running are kept; stopped ones come back."""
    from ingest.broker import start_detached
    from pizzashop.app.kafka import broker_data_dir

    settings = _setup(verbose)
    try:
        state = start_detached(
            cache_dir=settings.cache_dir,
            data_dir=broker_data_dir(settings),
            version=settings.broker.kafka_version,
            heap=settings.broker.heap,
            nodes=nodes,
            start_timeout_s=settings.broker.start_timeout_s,
        )
    except PizzashopError as exc:
        raise _fail(exc) from exc
    typer.echo(state.bootstrap)


@broker_app.command("stop")
def broker_stop(verbose: Verbose = False) -> None:
    """Stop every node of the local Kafka (clean shutdown); the next start reuses its ports."""
    from ingest.broker import stop_detached
    from pizzashop.app.kafka import broker_data_dir

    settings = _setup(verbose)
    typer.echo("stopped" if stop_detached(broker_data_dir(settings)) else "not running")


@broker_app.command("status")
def broker_status(verbose: Verbose = False) -> None:
    """Say which nodes of the local Kafka run and answer a metadata request.

    Exit code 0 when all do, 4 when only some do (clients still work), 3 when none does."""
    from ingest.broker import nodes_up, status
    from pizzashop.app.kafka import broker_data_dir

    settings = _setup(verbose)
    data_dir = broker_data_dir(settings)
    state = status(data_dir)
    if state is None:
        typer.echo("not running")
        raise typer.Exit(code=3)
    up = nodes_up(data_dir)
    serving = sum(up.values())
    typer.echo(
        f"running: {state.bootstrap} (Kafka {state.version}, "
        f"{serving} of {state.node_count} node(s) up)"
    )
    for node in state.nodes:
        mark = "up" if up.get(node.node_id) else "down"
        typer.echo(f"  node {node.node_id}: {mark}, 127.0.0.1:{node.port} (pid {node.pid})")
    if serving < state.node_count:
        raise typer.Exit(code=4)


# -- the shop -------------------------------------------------------------------------------
@app.command()
def topics(verbose: Verbose = False) -> None:
    """Create the shop's topics (harmless when they exist)."""
    from ingest.topics import Topics, ensure_topics
    from pizzashop.app.kafka import running_bootstrap

    settings = _setup(verbose)
    try:
        bootstrap = running_bootstrap(settings)
        specs = Topics(settings.topic_prefix).specs(
            settings.orders_partitions, settings.events_partitions
        )
        created = asyncio.run(
            ensure_topics(
                bootstrap,
                specs,
                replication_factor=settings.topic_replication_factor,
                client_options=_client_options(settings),
            )
        )
    except PizzashopError as exc:
        raise _fail(exc) from exc
    typer.echo(json.dumps({"created": created, "all": [s.name for s in specs]}))


@app.command()
def flows() -> None:
    """List the flows a worker process can run, with the topics each consumes."""
    from pizzashop.app.shop import registered_flows

    for name, spec in registered_flows().items():
        typer.echo(f"{name:<16} {', '.join(spec.topics)}")


@app.command()
def run(
    workers: Annotated[
        str | None,
        typer.Option(help="comma-separated flows to run (default: all; see `pizzashop flows`)"),
    ] = None,
    api: Annotated[bool, typer.Option(help="serve the HTTP API and relay the outbox")] = True,
    verbose: Verbose = False,
) -> None:
    """Run the API and/or workers until SIGINT/SIGTERM, then shut down in order."""
    settings = _setup(verbose)
    chosen = None if workers is None else tuple(w for w in workers.split(",") if w)
    try:
        uvloop.run(_run(settings, chosen, api))
    except PizzashopError as exc:
        raise _fail(exc) from exc


def _on_signals(loop: asyncio.AbstractEventLoop) -> asyncio.Event:
    """The event the first SIGINT or SIGTERM sets: stop fetching, drain, flush, close.

    A second one while that shutdown runs exits at once with status 128 + the signal (130
    after Ctrl+C), skipping what is left of it: an operator pressing Ctrl+C again means it.
    Nothing is lost by that: offsets are committed only after their effects are durable.
    """
    stop = asyncio.Event()
    log = logging.getLogger(__name__)

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("%s again: exiting now, without finishing the shutdown", sig.name)
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os._exit(128 + sig)
        log.warning("%s: shutting down in order (again to exit at once)", sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    return stop


async def _run(settings: Settings, workers: tuple[str, ...] | None, api: bool) -> None:
    from api.app import create_app
    from pizzashop.app.kafka import running_bootstrap
    from pizzashop.app.shop import Shop, Wiring
    from pizzashop.app.up import SignalFreeServer, api_config, tune_gc_for_serving

    stop = _on_signals(asyncio.get_running_loop())
    bootstrap = running_bootstrap(settings)
    async with Shop(settings, bootstrap, Wiring(api=api, workers=workers)) as shop:
        logging.getLogger(__name__).warning(
            "pizzashop running (api=%s, workers=%s, kafka=%s)",
            api,
            ",".join(shop.runtimes),
            bootstrap,
        )
        tune_gc_for_serving()
        if not api:
            await _serve_worker_metrics(settings, shop, stop)
            return
        config = api_config(
            create_app(shop), settings.api_host, settings.api_port, log_level="info"
        )
        # The CLI's handlers, not uvicorn's, take SIGINT/SIGTERM: the first sets `stop`, the
        # server and then the shop shut down in order, and one more signal exits at once.
        server = SignalFreeServer(config)
        serving = asyncio.ensure_future(server.serve())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        stopping.cancel()
        await serving


async def _serve_worker_metrics(settings: Settings, shop: Shop, stop: asyncio.Event) -> None:
    """Without the API, ``metrics_port`` serves this process's metrics (its consumers' counters
    and the lag of every group) from a thread, refreshed every 5 s; run until ``stop``."""
    if settings.metrics_port is None:
        await stop.wait()
        return
    from prometheus_client import start_http_server

    from api.metrics import ShopMetrics, flow_groups

    metrics = ShopMetrics(
        runtimes=lambda: shop.runtimes,
        bootstrap=shop.bootstrap,
        lag_groups=flow_groups(settings),
        client_options=shop.client_options,
    )
    server, thread = start_http_server(
        settings.metrics_port, addr=settings.api_host, registry=metrics.registry
    )
    logging.getLogger(__name__).warning(
        "metrics on http://%s:%s/metrics", settings.api_host, server.server_port
    )
    try:
        await metrics.run_refresher(5.0, stop)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@app.command()
def demo(
    orders: Annotated[int, typer.Option(min=1, help="orders to place through the API")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    timeout: Annotated[
        float, typer.Option(help="seconds to wait for every order to finish")
    ] = 180.0,
    registry: Annotated[
        bool, typer.Option(help="frame events through a schema registry (started if none runs)")
    ] = True,
    verbose: Verbose = False,
) -> None:
    """Start everything on real parts, place N orders, report what happened to each."""
    from pizzashop.app.demo import run_demo

    settings = _setup(verbose)
    try:
        report = asyncio.run(run_demo(settings, orders, timeout_s=timeout, with_registry=registry))
    except PizzashopError as exc:
        raise _fail(exc) from exc
    data = report.as_dict()
    if as_json:
        typer.echo(json.dumps(data))
    else:
        for key, value in data.items():
            typer.echo(f"{key:>24}: {value}")
    if report.lost or report.timed_out:
        raise typer.Exit(code=2)


# -- a whole shop for a developer ------------------------------------------------------------
mail_app = typer.Typer(no_args_is_help=True, help="What `pizzashop up`'s SMTP server received.")
app.add_typer(mail_app, name="mail")


@app.command()
def up(verbose: Verbose = False) -> None:
    """Start everything a developer needs on embedded defaults: the local broker, an SMTP server
    that keeps what it receives, the default models if the registry has none, the API and every
    worker. Prints the URLs and a fresh API key (inspect, operate); Ctrl+C stops it all."""
    from pizzashop.app.up import run_up

    settings = _setup(verbose)

    async def main() -> None:
        await run_up(settings, _on_signals(asyncio.get_running_loop()), _say)

    try:
        uvloop.run(main())
    except PizzashopError as exc:
        raise _fail(exc) from exc


def _say(line: str) -> None:
    typer.echo(line)
    sys.stdout.flush()


@mail_app.command("list")
def mail_list(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """The messages `pizzashop up`'s SMTP server has received, oldest first."""
    from pizzashop.app.up import read_mail

    messages = read_mail(Settings())
    for mail in messages:
        if as_json:
            typer.echo(json.dumps(mail))
        else:
            typer.echo(
                f"{mail['message_id']}  to {', '.join(mail['recipients'])}: {mail['subject']}"
            )
    if not as_json:
        typer.echo(f"{len(messages)} message(s)")


# -- dead letters ---------------------------------------------------------------------------
@dlq_app.command("list")
def dlq_list(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    verbose: Verbose = False,
) -> None:
    """Show every dead letter: where it came from, why it failed, its original bytes."""
    from ingest.dlq import read_dead_letters
    from ingest.topics import Topics
    from pizzashop.app.kafka import running_bootstrap

    settings = _setup(verbose)
    try:
        letters = asyncio.run(
            read_dead_letters(
                running_bootstrap(settings),
                Topics(settings.topic_prefix).dlq_topics(),
                client_options=_client_options(settings),
            )
        )
    except PizzashopError as exc:
        raise _fail(exc) from exc
    for letter in letters:
        if as_json:
            typer.echo(letter.as_json())
        else:
            typer.echo(
                f"{letter.original_topic}[{letter.original_partition}]@{letter.original_offset} "
                f"group={letter.consumer_group} {letter.error_class}: {letter.error_message} "
                f"(attempts={letter.attempts}, at {letter.failed_at})"
            )
    if not as_json:
        typer.echo(f"{len(letters)} dead letter(s)")


@dlq_app.command("replay")
def dlq_replay(
    group: Annotated[str | None, typer.Option(help="only letters of this consumer group")] = None,
    topic: Annotated[str | None, typer.Option(help="only letters from this original topic")] = None,
    error_class: Annotated[
        str | None, typer.Option(help="only letters with this error class")
    ] = None,
    event_id: Annotated[str | None, typer.Option(help="only the letter of this event id")] = None,
    since: Annotated[
        str | None, typer.Option(help="only letters dead-lettered at or after (ISO 8601)")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="only letters dead-lettered before (ISO 8601)")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="list what would be replayed")] = False,
    verbose: Verbose = False,
) -> None:
    """Send dead letters back to their original topics, byte for byte, for their group alone."""
    from ingest.dlq import LetterFilter

    settings = _setup(verbose)
    try:
        chosen = LetterFilter.parse(
            group=group,
            topic=topic,
            error_class=error_class,
            event_id=event_id,
            since=since,
            until=until,
        )
        count = asyncio.run(_replay(settings, chosen, dry_run))
    except PizzashopError as exc:
        raise _fail(exc) from exc
    typer.echo(f"{'would replay' if dry_run else 'replayed'} {count} dead letter(s)")


async def _replay(settings: Settings, chosen: LetterFilter, dry_run: bool) -> int:
    from ingest.dlq import read_dead_letters, replay
    from ingest.producer import EventProducer
    from ingest.topics import Topics
    from pizzashop.app.kafka import running_bootstrap

    bootstrap = running_bootstrap(settings)
    options = _client_options(settings)
    every = await read_dead_letters(
        bootstrap, Topics(settings.topic_prefix).dlq_topics(), client_options=options
    )
    letters = [letter for letter in every if chosen.matches(letter)]
    if dry_run:
        for letter in letters:
            typer.echo(
                f"{letter.original_topic}[{letter.original_partition}]@{letter.original_offset}"
            )
        return len(letters)
    async with EventProducer(
        bootstrap, client_id="pizzashop-replay", client_options=options
    ) as producer:
        for letter in letters:
            await replay(producer, letter)
    return len(letters)


# -- schema registry ------------------------------------------------------------------------
registry_app = typer.Typer(no_args_is_help=True, help="The local schema registry (Apicurio).")
schemas_app = typer.Typer(no_args_is_help=True, help="Event schemas in the schema registry.")
app.add_typer(registry_app, name="registry")
app.add_typer(schemas_app, name="schemas")


def _registry_dir(settings: Settings) -> Path:
    return settings.home / "schema-registry"


@registry_app.command("start")
def registry_start(verbose: Verbose = False) -> None:
    """Start the local schema registry in the background (built with Maven the first time) on
    the port it had before; print its URL. Its data is in memory."""
    from ingest.registry import start_detached

    settings = _setup(verbose)
    cfg = settings.schema_registry
    try:
        state = start_detached(
            cache_dir=settings.cache_dir,
            data_dir=_registry_dir(settings),
            heap=cfg.heap,
            start_timeout_s=cfg.start_timeout_s,
        )
    except PizzashopError as exc:
        raise _fail(exc) from exc
    typer.echo(state.url)


@registry_app.command("stop")
def registry_stop(verbose: Verbose = False) -> None:
    """Stop the local schema registry (what it held is gone: it keeps it in memory)."""
    from ingest.registry import stop_detached

    settings = _setup(verbose)
    typer.echo("stopped" if stop_detached(_registry_dir(settings)) else "not running")


@registry_app.command("status")
def registry_status(verbose: Verbose = False) -> None:
    """Say whether the local schema registry runs and answers; exit code 3 when not."""
    from ingest.registry import status

    settings = _setup(verbose)
    state = status(_registry_dir(settings))
    if state is None:
        typer.echo("not running")
        raise typer.Exit(code=3)
    typer.echo(f"running: {state.url} (pid {state.pid})")


def _registry_client(settings: Settings) -> RegistryClient:
    """A client of ``schema_registry.url``, else of the running local registry."""
    from ingest.registry import RegistryClient, status

    cfg = settings.schema_registry
    url = cfg.url
    if url is None:
        state = status(_registry_dir(settings))
        if state is None:
            raise _fail(
                ValueError(
                    "no schema registry: set PIZZASHOP_SCHEMA_REGISTRY__URL or run "
                    "`pizzashop registry start`"
                )
            )
        url = state.url
    password = cfg.password.get_secret_value() if cfg.password is not None else None
    return RegistryClient(url, username=cfg.username, password=password, timeout_s=cfg.timeout_s)


@schemas_app.command("export")
def schemas_export() -> None:
    """Rewrite the committed JSON Schemas (ingest/schemas/) and the AsyncAPI document."""
    from ingest.schemas import export
    from ingest.schemas.asyncapi import write
    from pizzashop.app.shop import registered_flows

    try:
        for written in export():
            typer.echo(written)
    except PizzashopError as exc:
        raise _fail(exc) from exc
    typer.echo(write(registered_flows()))


@schemas_app.command("check")
def schemas_check(
    as_json: Annotated[bool, typer.Option("--json", help="print the reports as JSON")] = False,
    verbose: Verbose = False,
) -> None:
    """Ask the registry whether the current event models may follow every registered version of
    their subjects; exit code 1 naming each subject and reason when one may not."""
    from ingest.registry import check
    from ingest.topics import Topics

    settings = _setup(verbose)
    level = settings.schema_registry.compatibility
    with _registry_client(settings) as client:
        try:
            reports = check(client, Topics(settings.topic_prefix), compatibility=level)
        except PizzashopError as exc:
            raise _fail(exc) from exc
    failed = [r for r in reports if r.problems]
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {"subject": r.subject, "versions": r.versions, "problems": r.problems}
                    for r in reports
                ],
                indent=2,
            )
        )
    else:
        for report in reports:
            mark = "FAIL" if report.problems else "ok"
            versions = ",".join(map(str, report.versions)) or "new"
            typer.echo(f"{mark:<5}{report.subject} (versions: {versions})")
            for problem in report.problems:
                typer.echo(f"       {problem}")
    if failed:
        typer.echo(f"{len(failed)} subject(s) incompatible with their registered history", err=True)
        raise typer.Exit(code=1)


@schemas_app.command("register")
def schemas_register(verbose: Verbose = False) -> None:
    """Set each subject's compatibility level and register the current event schemas; exit
    code 1 naming the subjects the registry refused."""
    from ingest.registry import register
    from ingest.topics import Topics

    settings = _setup(verbose)
    level = settings.schema_registry.compatibility
    with _registry_client(settings) as client:
        try:
            result = register(client, Topics(settings.topic_prefix), compatibility=level)
        except PizzashopError as exc:
            raise _fail(exc) from exc
    refused = {s: r for s, r in result.items() if isinstance(r, str)}
    for subject, outcome in result.items():
        typer.echo(f"{subject}: {'refused: ' + outcome if isinstance(outcome, str) else outcome}")
    if refused:
        raise typer.Exit(code=1)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def bench(ctx: typer.Context) -> None:
    """The benchmark suite (bench/suite.py): ceiling, peers, our flows, latency, the API.
    Options pass through: --json, --runs, --orders, --messages, --only, --profile, --help."""
    import subprocess
    from pathlib import Path

    # A checkout's script, run as its own process: the suite spawns brokers, virtualenvs and
    # subprocesses, and the installed package does not ship the bench folder.
    suite = Path(__file__).resolve().parents[2] / "bench" / "suite.py"
    if not suite.exists():
        raise _fail(FileNotFoundError(f"{suite} not found: run the bench from a checkout"))
    raise typer.Exit(subprocess.call([sys.executable, str(suite), *ctx.args]))


# -- db -------------------------------------------------------------------------------------
@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="target revision")] = "head",
    verbose: Verbose = False,
) -> None:
    """Migrate the database to the code's schema (or to REVISION); back it up first."""
    from pizzashop.core import migrations

    settings = _setup(verbose)
    try:
        state = asyncio.run(migrations.upgrade(settings.resolved_database_url, revision))
    except PizzashopError as exc:
        raise _fail(exc) from exc
    typer.echo(f"at revision {state.current} (head {state.head})")


@db_app.command("status")
def db_status(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    verbose: Verbose = False,
) -> None:
    """Say the database's revision and the code's; exit 3 when an upgrade is due."""
    from pizzashop.core import migrations

    settings = _setup(verbose)
    state = asyncio.run(migrations.schema_state(settings.resolved_database_url))
    if as_json:
        fields = ("current", "head", "empty", "legacy", "at_head")
        typer.echo(json.dumps({name: getattr(state, name) for name in fields}))
    elif state.at_head:
        typer.echo(f"up to date at revision {state.current}")
    elif state.empty:
        typer.echo(f"empty; the first start (or `pizzashop db upgrade`) builds {state.head}")
    else:
        where = "tables made before migrations" if state.legacy else f"revision {state.current}"
        typer.echo(f"at {where}; the code is at {state.head}: run `pizzashop db upgrade`")
    if not (state.at_head or state.empty):
        raise typer.Exit(code=3)


@db_app.command("revision")
def db_revision(
    message: Annotated[str, typer.Option("--message", "-m", help="what the change does")],
    verbose: Verbose = False,
) -> None:
    """Autogenerate the next migration from the models (developers: see pizzashop.migrations)."""
    from pizzashop.core import migrations

    _setup(verbose)
    typer.echo(migrations.new_revision(message))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
