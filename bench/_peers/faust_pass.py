"""The passthrough in Faust (faust-streaming, exactly_once), run in its own virtualenv."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import faust

sys.path.insert(0, str(Path(__file__).parent))
from _common import arguments, report

args = arguments()
sys.argv = [sys.argv[0], "worker", "--loglevel", "warn", "--without-web"]
app = faust.App(
    args.group,
    broker=f"kafka://{args.bootstrap}",
    processing_guarantee="exactly_once",
    store="memory://",
    topic_disable_leader=True,
    web_enabled=False,
    datadir=f"/tmp/faust-{args.group}",
)
source = app.topic(args.source, value_serializer="raw")
sink = app.topic(args.sink, value_serializer="raw")
state: dict[str, Any] = {"done": 0, "began": 0.0}


@app.agent(source)  # type: ignore[untyped-decorator]
async def passthrough(stream: Any) -> None:
    async for value in stream:
        state["began"] = state["began"] or time.perf_counter()
        order = json.loads(value)
        if order.get("items"):
            await sink.send(value=json.dumps({**order, "passed": True}).encode())
        state["done"] += 1
        if state["done"] >= args.count:
            await app.commit(app.consumer.assignment())
            report(state["done"], time.perf_counter() - state["began"])
            os._exit(0)


if __name__ == "__main__":
    app.main()
