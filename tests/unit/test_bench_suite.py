"""bench/suite.py's pure parts (merging runs, the RESULTS writer) and the open-loop load of
bench/_peers/http_load.py against a stand-in server on localhost (no broker)."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from pathlib import Path
from typing import Any, cast

import pytest

from bench._peers.http_load import (
    Offer,
    Probe,
    encode_request,
    offer_rate,
    order_id_of,
    read_response,
)
from bench.suite import KEPT_MARKER, _median, parse, write_results


def rate_row(p99: float | None, *, sustained: bool) -> dict[str, Any]:
    return {
        "p50": None if p99 is None else p99 / 2,
        "p99": p99,
        "sustained": sustained,
        "not_sustained_because": None if sustained else "900 orders in flight",
        "orders": 1000,
        "enriched": 1000 if sustained else 400,
        **({"cores": {"api": 0.5, "enricher": 0.75, "machine": 1.5}} if sustained else {}),
    }


def a_run(kitchen: float, p99_500: float | None, *, sustained_500: bool) -> dict[str, Any]:
    return {
        "ours": {"kitchen_per_s": kitchen, "kitchen_confluent_per_s": 2 * kitchen},
        "latency_ms": {
            "200": rate_row(40.0, sustained=True),
            "500": rate_row(p99_500, sustained=sustained_500),
        },
        "api": {"orders_per_s": 700.0, "statuses": {"202": 5}, "tool": "wrk"},
    }


def test_median_takes_numbers_where_present_and_the_majority_of_yes_no() -> None:
    runs = [
        a_run(100, 80.0, sustained_500=True),
        a_run(300, None, sustained_500=False),
        a_run(200, 120.0, sustained_500=True),
    ]
    median, spread = _median(runs)
    assert median["ours"] == {"kitchen_per_s": 200, "kitchen_confluent_per_s": 400}
    assert spread["ours"]["kitchen_confluent_per_s"] == [200, 600]
    five = median["latency_ms"]["500"]
    assert five["p99"] == 100.0  # over the two runs that have one
    assert spread["latency_ms"]["500"]["p99"] == [80.0, 120.0]
    assert five["sustained"] is True
    assert spread["latency_ms"]["500"]["sustained"] == [2, 3]
    assert median["api"]["tool"] == "wrk"


def test_median_merges_runs_with_different_keys() -> None:
    failed = {"latency_ms": {"error": {"message": "the enricher's process exited (1)"}}}
    median, _ = _median([failed, a_run(1, 50.0, sustained_500=False)])
    assert median["latency_ms"]["error"]["message"].startswith("the enricher")
    assert median["latency_ms"]["500"]["sustained"] is False  # held in 0 of 2
    assert median["ours"]["kitchen_per_s"] == 1


def written(tmp_path: Path, runs: list[dict[str, Any]]) -> str:
    path = tmp_path / "RESULTS.md"
    path.write_text(f"old figures\n\n{KEPT_MARKER}\n\n## By hand\n\nkept text\n")
    median, spread = _median(runs)
    write_results(parse(["--results", str(path)]), median, spread, len(runs), path)
    return path.read_text()


def test_results_show_the_new_keys_and_keep_the_hand_written_part(tmp_path: Path) -> None:
    text = written(tmp_path, [a_run(100, 80.0, sustained_500=True)])
    assert "| ours: kitchen, confluent-kafka transport | 200 |" in text
    assert "| kitchen_confluent | kitchen on aiokafka | 2.000 |" in text
    assert "| 500 | yes (1/1) |" in text
    assert "| 0.50, 0.75, 1.50 |" in text
    assert "p99 at most 100 ms at 500/s: **met**" in text
    assert "Highest rate sustained: 500/s." in text
    assert "old figures" not in text
    assert text.endswith(f"{KEPT_MARKER}\n\n## By hand\n\nkept text\n")
    assert text.count(KEPT_MARKER) == 1


def test_results_mark_a_rate_not_sustained(tmp_path: Path) -> None:
    text = written(tmp_path, [a_run(100, None, sustained_500=False)])
    assert "| 500 | no (0/1) | - | - | - | - | - | 400/1,000 | - |" in text
    assert "500/s not sustained (first run): 900 orders in flight" in text
    assert "**not met**" in text
    assert "Highest rate sustained: 200/s." in text


async def test_request_bytes_and_response_parsing() -> None:
    request = encode_request("127.0.0.1:8000", {"a": 1})
    assert request == (
        b"POST /orders HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Type: application/json\r\n"
        b"Content-Length: 7\r\n\r\n" + b'{"a":1}'
    )
    reader = asyncio.StreamReader()
    body = b'{"status":"Confirmed","order_id":"ord-1","duplicate":false}'
    reader.feed_data(b"HTTP/1.1 202 Accepted\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    reader.feed_data(b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\n\r\n")
    assert await read_response(reader) == (202, body, True)
    assert await read_response(reader) == (503, b"", False)
    assert order_id_of(body) == "ord-1"
    assert order_id_of(b'{"detail":"no"}') is None


class FakeProbe:
    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}


async def stand_in_shop(probe: FakeProbe, *, enriches: bool) -> asyncio.Server:
    """Answers every POST with a 202 and a fresh order id; with ``enriches``, the order counts
    as enriched at once."""
    ids = itertools.count()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                order_id = f"ord-{next(ids)}"
                if enriches:
                    probe.arrived[order_id] = time.perf_counter()
                body = b'{"status":"Confirmed","order_id":"%s"}' % order_id.encode()
                writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: %d\r\n\r\n" % len(body))
                writer.write(body)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


@pytest.mark.parametrize("enriches", [True, False])
async def test_offer_rate_sustains_a_rate_or_cuts_it_short(enriches: bool) -> None:
    probe = FakeProbe()
    server = await stand_in_shop(probe, enriches=enriches)
    port = server.sockets[0].getsockname()[1]
    offer = Offer(f"http://127.0.0.1:{port}", max_connections=4, initial=2)
    requests = itertools.repeat(encode_request(f"127.0.0.1:{port}", {"a": 1}))
    args = argparse.Namespace(seconds=1.0, max_lag_s=0.1, settle_s=5.0)
    try:
        row = await offer_rate(offer, cast(Probe, probe), requests, 200, args)
    finally:
        await offer.close()
        server.close()
        await server.wait_closed()
    if enriches:
        assert row["sustained"] is True
        assert row["orders"] == row["confirmed"] == row["enriched"] == 200
        assert row["achieved_offered_per_s"] >= 190
        assert row["p99"] is not None
        assert row["not_sustained_because"] is None
    else:  # nothing is enriched: cut short once 50 orders (the least cap) are in flight
        assert row["sustained"] is False
        assert 50 < row["orders"] < 200
        assert row["enriched"] == 0
        assert row["p99"] is None
        assert "in flight" in row["not_sustained_because"]
    assert row["connections"] <= 4


def test_results_give_the_load_average_of_each_run(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    median, spread = _median([a_run(100, 80.0, sustained_500=True)])
    median["machine"] = {"cores": 2, "load_1m": [[0.5, 1.25], [3.0, 9.5]]}
    write_results(parse(["--results", str(path)]), median, spread, 2, path)
    assert "each run: 0.5 → 1.2, 3.0 → 9.5;" in path.read_text()
