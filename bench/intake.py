"""The order API, before and after, side by side: orders/s and confirm latency at N connections.

    .venv/bin/python bench/intake.py [--runs 3] [--seconds 5] [--connections 16]
                                     [--before REF] [--variants before,after] [--profile DIR]
                                     [--json]

Each variant's server is a process of its own (``--serve``): the shop's API with its outbox
relay on a fresh SQLite file, no workers, no rate limit. The load comes from another process:
wrk (``apt-get install wrk``) with one thread and ``--connections`` connections, each placing
realistic orders back to back (or, without wrk, ``bench/_peers/http_load.py closed``). The
variants take turns within every run, so the shared machine's noise falls on both alike; the
report is the median of the runs with their min and max.

* ``before``: the standard asyncio loop, uvicorn's pure-Python h11 parser, one transaction per
  order; with ``--before REF`` the code of that git commit (checked out into a temporary
  worktree) instead of this one's one-transaction path;
* ``after``: uvloop, httptools, orders grouped into shared commits (``services.group_intake``),
  the start-up heap frozen (``pizzashop.app.up.api_config``, ``tune_gc_for_serving``);
* ``base`` (only when asked for, with ``--before REF``): ``after`` served from that commit's
  code, so an optimisation of ``after`` is measured against ``after`` as it was;
* ``http-only`` (only when asked for): ``after`` with an intake that validates and builds each
  order but stores none, the HTTP stack's own ceiling in this process.

Every response must be a 202 for a stored order: a run fails unless every status is 202 and
the server's database holds at least as many orders as were confirmed (requests cut off by the
end of the run may be stored unconfirmed, never the reverse). ``--profile DIR`` attaches
py-spy to each server for the measured seconds (collapsed stacks, one file per variant and
run). Uses PIZZASHOP_KAFKA_BOOTSTRAP if set, else starts a local broker for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import itertools
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx

from pizzashop.core.net import free_port

if __package__ in (None, ""):  # run as a script: make the repository importable, after
    # PYTHONPATH, which names the code `before` runs (an older commit's worktree)
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from bench._intake_load import load, wrk_script

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
#: py-spy is installed into the venv beside this interpreter.
PY_SPY = str(Path(sys.executable).with_name("py-spy"))
VARIANTS = ("before", "after", "http-only", "base")
FIGURES = ("orders_per_s", "p50_ms", "p99_ms", "cpu_ms_per_order", "cpu_share")


# -- the server -------------------------------------------------------------------------------
async def serve(variant: str, home: Path, bootstrap: str, port: int, database_url: str) -> None:
    """One variant's API until SIGINT/SIGTERM (uvicorn's own handlers)."""
    import uvicorn

    from api.app import create_app
    from pizzashop.app import up
    from pizzashop.app.shop import Shop, Wiring
    from pizzashop.core.settings import Settings

    settings = Settings(
        kafka_bootstrap=bootstrap,
        home=home,
        topic_prefix=f"bench-{uuid.uuid4().hex[:6]}.",
        api={"rate_limit_per_address": ""},
        database_url=database_url or None,
    )
    after = variant != "before"
    async with Shop(settings, bootstrap, Wiring(workers=())) as shop:
        if variant == "http-only":
            shop.intake = Unstored(shop.menu)  # type: ignore[assignment]
        # `before` may be an older commit's create_app, from before the keyword.
        if "group_commit" in inspect.signature(create_app).parameters:
            app = create_app(shop, group_commit=variant in ("after", "base"))
        else:
            app = create_app(shop)
        if after:  # served as pizzashop.app.up serves it
            config = up.api_config(app, "127.0.0.1", port)
            # `base` may be an older commit's code, from before the rename.
            names = ("tune_gc_for_serving", "freeze_startup_heap")
            next(getattr(up, name) for name in names if hasattr(up, name))()
        else:  # as before this work (an older commit has no api_config)
            config = uvicorn.Config(
                app,
                host="127.0.0.1",
                port=port,
                log_level="warning",
                access_log=False,
                lifespan="off",
                http="h11",
            )
        await uvicorn.Server(config).serve()


class Unstored:
    """``http-only``'s intake: validates and builds each order like the real one, stores none.
    What the HTTP stack costs (uvicorn, middleware, tracing, FastAPI, validation) without the
    database: the ceiling of this process's order API."""

    def __init__(self, menu: Any) -> None:
        self._menu = menu

    async def place(self, request: Any, traceparent: str | None = None) -> Any:
        from services.intake import Placed, build_order

        event = build_order(request, self._menu, f"ord-{uuid.uuid4().hex[:16]}")
        return Placed(event.order_id, event.event_id, duplicate=False)


def serve_main(args: argparse.Namespace) -> None:
    coro = serve(args.serve, Path(args.home), args.bootstrap, args.port, args.database_url)
    if args.serve != "before":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


# -- one variant, once ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def server(
    variant: str, tmp: Path, bootstrap: str, source: Path, database_url: str
) -> AsyncIterator[tuple[str, Path, int]]:
    """The variant's server process; yields its URL, its home and its pid."""
    home = tmp / f"{variant}-{uuid.uuid4().hex[:6]}"
    home.mkdir()
    port = free_port()
    argv = [sys.executable, str(HERE), "--serve", variant]
    argv += ["--home", str(home), "--bootstrap", bootstrap, "--port", str(port)]
    argv += ["--database-url", database_url]
    env = {**os.environ, "PYTHONPATH": str(source)}
    log = (home / "server.log").open("wb")
    proc = await asyncio.create_subprocess_exec(*argv, cwd=source, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            for _ in range(600):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/health/live")).status_code == 200:
                        break
                if proc.returncode is not None:
                    raise RuntimeError(f"{variant} server exited; see {log.name}")
                await asyncio.sleep(0.1)
        yield url, home, proc.pid
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far (Linux ``/proc``), all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def database(postgres: str) -> AsyncIterator[str]:
    """A fresh database for one server: "" (its SQLite file in its home) or, with
    ``--postgres``, a database of its own on that server, dropped afterwards."""
    if not postgres:
        yield ""
        return
    import asyncpg

    name = f"pizzashop_bench_{uuid.uuid4().hex[:8]}"
    admin = postgres.replace("+asyncpg", "")
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
        yield f"{postgres.rsplit('/', 1)[0]}/{name}"
    finally:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await conn.close()


async def stored_orders(home: Path, database_url: str) -> int:
    if not database_url:
        with contextlib.closing(sqlite3.connect(home / "pizzashop.db")) as db:
            return int(db.execute("SELECT count(*) FROM orders").fetchone()[0])
    import asyncpg

    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM orders"))
    finally:
        await conn.close()


async def measure(
    variant: str, args: argparse.Namespace, tmp: Path, bootstrap: str, source: Path, run: int
) -> dict[str, Any]:
    async with database(args.postgres) as database_url:
        async with server(variant, tmp, bootstrap, source, database_url) as (url, home, pid):
            result, warm_confirmed = await load_server(variant, args, url, pid, tmp, run)
        # Counted once the server has stopped: nothing more can come in.
        stored = await stored_orders(home, database_url)
    confirmed = warm_confirmed + result.get("statuses", {}).get("202", 0)
    result["stored"], result["confirmed"] = stored, confirmed
    if variant == "http-only":  # stores nothing by design
        stored = confirmed
    if set(result["statuses"]) != {"202"} or result.get("socket_errors") or stored < confirmed:
        raise RuntimeError(f"{variant}: not every response a 202 for a stored order: {result}")
    return result


async def load_server(
    variant: str, args: argparse.Namespace, url: str, pid: int, tmp: Path, run: int
) -> tuple[dict[str, Any], int]:
    """Warm up, then the measured load (py-spy attached with ``--profile``); the result and
    how many orders the warm-up confirmed."""
    script = tmp / "orders.lua"
    warm = await load(url, 1, args.connections, script)
    profiler = None
    if args.profile:
        out = Path(args.profile) / f"{variant}-{run}.txt"
        profiler = await asyncio.create_subprocess_exec(
            *[PY_SPY, "record", "--pid", str(pid), "--duration", str(int(args.seconds))],
            *["--format", "raw", "--rate", "250", "--nonblocking", "-o", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    cpu = cpu_seconds(pid)
    result = await load(url, args.seconds, args.connections, script)
    cpu = cpu_seconds(pid) - cpu
    if profiler is not None:
        await profiler.wait()
    # The server's CPU per order: what the machine's other load blurs less than time does.
    result["cpu_ms_per_order"] = round(1000 * cpu / max(1, result["requests"]), 3)
    result["cpu_share"] = round(cpu / result["seconds"], 2)
    return result, int(warm.get("statuses", {}).get("202", 0))


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for figure in FIGURES:
        values = [float(r[figure]) for r in runs]
        out[figure] = {
            "median": round(statistics.median(values), 2),
            "min": min(values),
            "max": max(values),
        }
    statuses: Counter[str] = Counter()
    for r in runs:
        statuses.update(r["statuses"])
    out["statuses"] = dict(statuses)
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from pizzashop.app.kafka import kafka
    from pizzashop.app.traffic import OrderRequests
    from pizzashop.core.menu import load_menu
    from pizzashop.core.settings import Settings

    async with AsyncExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-api-")))
        bootstrap = await stack.enter_async_context(
            kafka(Settings(home=tmp, cache_dir=REPO / ".cache"))
        )
        bodies = list(itertools.islice(OrderRequests(load_menu(), seed=1), 500))
        wrk_script(tmp / "orders.lua", bodies)
        before_source = REPO
        if args.before:
            before_source = tmp / "before"
            await asyncio.to_thread(
                subprocess.run,
                ["git", "worktree", "add", "--detach", str(before_source), args.before],
                cwd=REPO,
                check=True,
                capture_output=True,
            )
            stack.callback(
                subprocess.run,
                ["git", "worktree", "remove", "--force", str(before_source)],
                cwd=REPO,
                check=False,
                capture_output=True,
            )
        if args.profile:
            await asyncio.to_thread(Path(args.profile).mkdir, parents=True, exist_ok=True)
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
        for run in range(args.runs):
            for variant in args.variants:
                source = before_source if variant in ("before", "base") else REPO
                result = await measure(variant, args, tmp, bootstrap, source, run)
                runs[variant].append(result)
                print(f"run {run + 1} {variant}: {json.dumps(result)}", file=sys.stderr)
        return {
            "cores": os.cpu_count(),
            "connections": args.connections,
            "seconds": args.seconds,
            "runs": args.runs,
            "before": args.before or "this commit, group commit off, asyncio, h11",
            "load": "wrk -t1" if shutil.which("wrk") else "bench/_peers/http_load.py",
            "database": "PostgreSQL" if args.postgres else "SQLite",
            **{variant: summarise(results) for variant, results in runs.items()},
            "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--before", default="", help="git ref whose code is `before`")
    parser.add_argument(
        "--variants",
        type=lambda s: tuple(s.split(",")),
        default=VARIANTS[:2],
        help="of before,after,http-only,base",
    )
    parser.add_argument("--profile", default="", help="folder for py-spy's collapsed stacks")
    parser.add_argument(
        "--postgres",
        default="",
        help="a PostgreSQL URL (postgresql+asyncpg://...): each server gets a database of its "
        "own there instead of SQLite",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--database-url", default="", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        serve_main(options)
        sys.exit(0)
    report = asyncio.run(main(options))
    if options.json:
        print(json.dumps(report))
    else:
        print(json.dumps(report, indent=2))
