"""The one lifecycle (``pizzashop.core.lifecycle.Resource``) and the CLI's signal handling."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from ingest.producer import EventProducer, TransactionalProducer
from pizzashop.core.database import Database
from pizzashop.core.lifecycle import Resource, State
from services.mailer import SmtpSink

ROOT = Path(__file__).resolve().parents[2]


class Probe(Resource):
    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[str] = []

    async def _start(self) -> None:
        self.calls.append("start")
        if self.fail:
            raise OSError("cannot open")

    async def _stop(self) -> None:
        self.calls.append("stop")


async def test_async_with_returns_the_resource_and_stops_it() -> None:
    probe = Probe()
    async with probe as entered:
        assert entered is probe
        assert probe.state is State.RUNNING
    assert probe.state.value == "stopped"  # (``is`` would trip mypy's narrowing)
    assert probe.calls == ["start", "stop"]


async def test_start_twice_starts_once_and_stop_twice_stops_once() -> None:
    probe = Probe()
    await probe.start()
    await probe.start()
    await probe.stop()
    await probe.stop()
    assert probe.calls == ["start", "stop"]


async def test_a_stopped_resource_refuses_to_start_again() -> None:
    probe = Probe()
    async with probe:
        pass
    with pytest.raises(RuntimeError, match="Probe is stopped; create a new one"):
        await probe.start()
    assert probe.calls == ["start", "stop"]


async def test_stop_before_start_closes_it_without_running_stop() -> None:
    probe = Probe()
    await probe.stop()
    assert probe.state is State.STOPPED and probe.calls == []
    with pytest.raises(RuntimeError, match="stopped"):
        await probe.start()


async def test_a_failed_start_undoes_itself_and_leaves_it_stopped() -> None:
    probe = Probe(fail=True)
    with pytest.raises(OSError, match="cannot open"):
        async with probe:
            raise AssertionError("not entered")
    assert probe.state is State.STOPPED
    assert probe.calls == ["start", "stop"]
    await probe.stop()  # still idempotent
    assert probe.calls == ["start", "stop"]


async def test_check_running_names_the_state() -> None:
    probe = Probe()
    with pytest.raises(RuntimeError, match="Probe is new, not running"):
        probe._check_running()
    async with probe:
        probe._check_running()


async def test_the_database_is_a_resource(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}")
    async with db as entered:
        assert entered is db and db.state is State.RUNNING
    await db.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        await db.start()


async def test_a_stopped_producer_refuses_to_send_without_touching_the_network() -> None:
    # Nothing listens on port 9: a send that tried to connect would fail differently.
    producer = EventProducer("127.0.0.1:9")
    async with producer:
        assert not producer.connected  # start() opens without connecting
    with pytest.raises(RuntimeError, match="EventProducer is stopped"):
        await producer.send_raw("topic", b"x")
    transactional = TransactionalProducer("127.0.0.1:9", "tx")
    await transactional.stop()
    with pytest.raises(RuntimeError, match="TransactionalProducer is stopped"):
        await transactional.connect()


async def test_the_smtp_sink_suspends_and_resumes_but_never_restarts() -> None:
    sink = SmtpSink()
    async with sink:
        assert sink.serving
        await sink.suspend()
        assert not sink.serving and sink.state is State.RUNNING
        await sink.resume()
        assert sink.serving
    assert not sink.serving
    with pytest.raises(RuntimeError, match="SmtpSink is stopped"):
        await sink.resume()


async def test_an_smtp_outage_cuts_open_sessions_and_leaves_no_socket_behind() -> None:
    async with SmtpSink() as sink:
        reader, writer = await asyncio.open_connection(sink.host, sink.port)
        assert (await reader.readline()).startswith(b"220")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            await sink.suspend()
            gc.collect()
        # The session is cut (the client reads its end), its socket closed, not collected.
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


SLOW_TO_STOP = textwrap.dedent(
    """
    import asyncio

    from pizzashop.app.cli import _on_signals

    async def main() -> None:
        stop = _on_signals(asyncio.get_running_loop())
        print("ready", flush=True)
        await stop.wait()
        print("stopping", flush=True)
        await asyncio.sleep(60)  # a shutdown that takes its time (a drain, a flush)
        print("stopped", flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_during_shutdown_exits_at_once(sig: signal.Signals) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_TO_STOP],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(sig)
        assert process.stdout.readline().strip() == "stopping"
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=0.5)  # the first signal shuts down in order: still running
        process.send_signal(sig)
        code = process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    _, stderr = process.communicate()
    assert code == 128 + sig
    assert f"{sig.name}: shutting down in order" in stderr
    assert f"{sig.name} again: exiting now" in stderr
