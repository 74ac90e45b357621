"""The chaos suite, short: every kind of fault once under real load, then the promises hold.

``bench/chaos.py`` at a small size: a few hundred orders through HTTP into the shop running as
real processes (API, two of each worker), two worker SIGKILLs (one aimed at a rebalance), one
SIGKILL of the broker's JVM, a short SMTP outage and five malformed records. The check reads
only durable outputs (topics with ``read_committed``, the database, the SMTP server's log).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.chaos import ChaosOptions, run_chaos
from pizzashop.core.settings import Settings


@pytest.mark.timeout(600)
async def test_chaos_loses_nothing_and_does_nothing_twice(
    tmp_path: Path, kafka_cache_dir: Path, trained_registry: Path
) -> None:
    settings = Settings(
        kafka_bootstrap=None,  # its own broker, which it restarts
        database_url=None,  # SQLite: a shared test PostgreSQL would mix other tests' outbox in
        home=tmp_path / "home",
        cache_dir=kafka_cache_dir,
        registry_dir=trained_registry,
        cook_seconds=0.2,
        consumer={"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000},
    )
    options = ChaosOptions(
        orders=600,
        rate=8,
        kills=2,
        broker_restarts=1,
        broker_kill_first=True,
        broker_down_s=10,
        smtp_outage_s=10,
        malformed=5,
        settle_timeout_s=150,
        quiet_s=40,
        workdir=tmp_path,
    )
    report = await run_chaos(settings, options)
    shown = json.dumps({k: v for k, v in report.items() if k != "faults"}, indent=1)

    assert report["kills"] == 2, shown
    assert report["broker_restarts"] == 1, shown
    assert report["faults"]["broker_restarts"][0]["how"] == "SIGKILL", shown
    assert report["smtp_outage_s"] >= 10, shown
    assert report["confirmed"] > 0.9 * report["orders"], shown
    assert report["lost"] == 0, shown
    assert report["stuck"] == 0, shown
    assert report["charged_not_refunded"] == 0, shown
    assert report["duplicate_records"] == 0, shown
    assert report["not_enriched"] == 0, shown
    assert report["dlq_records"] == report["malformed_injected"] == 5, shown
    assert report["duplicate_emails"] <= report["kills"] * report["max_unconfirmed"], shown
