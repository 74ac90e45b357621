"""Arguments and the one transform every passthrough applies (stdlib only: peers import it by
path, from virtualenvs without this project)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--sink", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--count", type=int, required=True)
    return parser.parse_args()


def transform(value: bytes) -> bytes | None:
    """Decode, filter (orders with items), encode."""
    order: dict[str, Any] = json.loads(value)
    if not order.get("items"):
        return None
    order["passed"] = True
    return json.dumps(order).encode()


def report(count: int, seconds: float) -> None:
    print(json.dumps({"per_s": round(count / seconds, 1), "count": count}), flush=True)
