"""The passthrough in Quix Streams (exactly-once), run in its own virtualenv."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from quixstreams import Application

sys.path.insert(0, str(Path(__file__).parent))
from _common import arguments, report


def main() -> None:
    args = arguments()
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        auto_create_topics=True,
        use_changelog_topics=False,
    )
    source = app.topic(args.source, value_deserializer="json")
    sink = app.topic(args.sink, value_serializer="json")
    state: dict[str, Any] = {"done": 0, "began": 0.0}

    def count(order: dict[str, Any]) -> dict[str, Any]:
        state["began"] = state["began"] or time.perf_counter()
        state["done"] += 1
        if state["done"] >= args.count:
            app.stop()
        return order

    sdf = app.dataframe(source)
    sdf = sdf.update(count)  # counts every record, the filtered ones too
    sdf = sdf.filter(lambda order: bool(order.get("items")))
    sdf = sdf.apply(lambda order: {**order, "passed": True})
    sdf.to_topic(sink)
    app.run()  # returns after its final checkpoint (the last transaction) commits
    report(state["done"], time.perf_counter() - state["began"])


if __name__ == "__main__":
    main()
