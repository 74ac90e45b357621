"""`pizzashop up` as a developer runs it: a subprocess on free ports prints its URLs and a key;
an order placed through it becomes ready, its receipt shows in `pizzashop mail list`; SIGINT
stops everything and the process exits 0. (The session's broker stands in for the local one it
would otherwise start, to spare the CI machine a second JVM.)"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import uuid
from pathlib import Path

import httpx

from pizzashop.core.menu import load_menu
from tests.support.shop import eventually

MENU = load_menu()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_up_serves_a_shop_and_stops_on_ctrl_c(
    kafka_bootstrap: str, trained_registry: Path, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "PIZZASHOP_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "PIZZASHOP_HOME": str(tmp_path / "home"),
        "PIZZASHOP_REGISTRY_DIR": str(trained_registry),
        "PIZZASHOP_TOPIC_PREFIX": f"up-{run}.",
        "PIZZASHOP_GROUP_PREFIX": f"up-{run}",
        "PIZZASHOP_API_PORT": str(free_port()),
        "PIZZASHOP_SMTP__PORT": str(free_port()),
        "PIZZASHOP_COOK_SECONDS": "0.2",
        "PIZZASHOP_CONSUMER__SESSION_TIMEOUT_MS": "6000",
        "PIZZASHOP_CONSUMER__HEARTBEAT_INTERVAL_MS": "1000",
    }
    errors = tmp_path / "up.stderr"
    with errors.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pizzashop.app.cli", "up",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=stderr,
        )  # fmt: skip
    assert proc.stdout is not None
    printed: dict[str, str] = {}
    try:
        async with asyncio.timeout(180):
            while "api key" not in printed:
                line = (await proc.stdout.readline()).decode()
                assert line, f"pizzashop up ended early: {errors.read_text()[-2000:]}"
                name, _, value = line.strip().partition("  ")
                printed[name.strip()] = value.strip()
        base = printed["api"]
        key = printed["api key"].split()[0]
        assert printed["dashboard"] == f"{base}/dashboard"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            assert (await http.get("/scores")).status_code == 401
            assert (await http.get("/scores", headers={"X-API-Key": key})).status_code == 200
            price = MENU["four_cheese_l"].price
            placed = await http.post(
                "/orders",
                headers={"X-API-Key": key},
                json={
                    "customer_id": "c-up",
                    "customer_email": "up@example.com",
                    "items": [{"sku": "four_cheese_l", "quantity": 1, "unit_price": str(price)}],
                    "total": str(price),
                    "payment": {"kind": "card", "card_fingerprint": "fp-0badc0de", "last4": "4242"},
                },
            )
            assert placed.status_code == 202, placed.text
            order_id = placed.json()["order_id"]

            async def ready() -> bool:
                got = await http.get(f"/orders/{order_id}", headers={"X-API-Key": key})
                return got.status_code == 200 and got.json()["status"] == "ready"

            await eventually(ready, timeout_s=90, every_s=0.3)
            metrics = (await http.get("/metrics")).text
            assert "pizzashop_consumer_lag{" in metrics

        async def receipt() -> bool:
            listed = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "pizzashop.app.cli", "mail", "list",
                env=env, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, _ = await listed.communicate()
            return "up@example.com" in out.decode()

        await eventually(receipt, timeout_s=30, every_s=0.5)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
    rest, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, errors.read_text()[-2000:]
    assert "pizzashop is stopping" in rest.decode()
