"""The mailer against a real SMTP server (aiosmtpd on loopback, no broker): with many
connections in flight, no more than ``max_unconfirmed`` messages are ever taken by the server
and not yet confirmed (what a crash may repeat); a message goes out once, dots and all; a veto
or a refusal after DATA's 354 sends nothing and leaves the pool usable."""

from __future__ import annotations

import asyncio

import pytest

from pizzashop.core.errors import NotSent
from pizzashop.core.settings import SmtpSettings
from services.mailer import Mailer, SmtpSink


@pytest.mark.parametrize("bound", [1, 3])
async def test_the_server_never_holds_more_than_the_bound_unconfirmed(bound: int) -> None:
    async with SmtpSink() as sink:
        settings = SmtpSettings(
            host=sink.host, port=sink.port, connections=8, max_unconfirmed=bound
        )
        confirmed = 0
        peak = 0

        async def mark() -> None:
            nonlocal confirmed, peak
            # The sink records a message before its 250: what it holds beyond the confirmed
            # ones is what a crash right now would send again.
            peak = max(peak, len(sink.messages) - confirmed)
            await asyncio.sleep(0.002)  # a mark's transaction: others arrive meanwhile
            peak = max(peak, len(sink.messages) - confirmed)
            confirmed += 1

        async with Mailer(settings) as mailer:
            await asyncio.gather(
                *(
                    mailer.send(
                        to=f"c-{i}@example.com",
                        subject=f"receipt {i}",
                        body=f"order {i}\n.\n..a line with dots\n",
                        message_id=f"m-{i}",
                        accepted=mark,
                    )
                    for i in range(60)
                )
            )
    assert confirmed == 60
    assert sorted(m.message_id for m in sink.messages) == sorted(f"m-{i}" for i in range(60))
    assert 1 <= peak <= bound
    if bound > 1:
        assert peak > 1, "the connections never overlapped: the test shows nothing"
    # Lines of dots come back as written (doubled on the wire, undoubled by the server).
    bodies = {m.message_id: m.body.replace("\r\n", "\n") for m in sink.messages}
    assert bodies["m-7"] == "order 7\n.\n..a line with dots\n"


async def test_a_veto_after_the_354_sends_nothing_and_the_pool_goes_on() -> None:
    async with SmtpSink() as sink:
        settings = SmtpSettings(host=sink.host, port=sink.port, connections=1)

        async def veto() -> None:
            raise NotSent("passed to another sender")

        async with Mailer(settings) as mailer:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(NotSent):
                await mailer.send(
                    to="a@example.com", subject="s", body="b", message_id="m-1", before_data=veto
                )
            # Cut, not QUIT (which the server would read as message text, and never answer).
            assert loop.time() - started < 0.5
            await mailer.send(to="a@example.com", subject="s", body="b", message_id="m-2")
    assert [m.message_id for m in sink.messages] == ["m-2"]


async def test_a_refused_message_is_not_sent_and_the_next_one_goes() -> None:
    async with SmtpSink(temporary_failures=1) as sink:
        settings = SmtpSettings(host=sink.host, port=sink.port, connections=1)
        marks: list[str] = []

        async def mark() -> None:
            marks.append("marked")

        async with Mailer(settings) as mailer:
            with pytest.raises(NotSent, match="451"):
                await mailer.send(
                    to="a@example.com", subject="s", body="b", message_id="m-1", accepted=mark
                )
            await mailer.send(
                to="a@example.com", subject="s", body="b", message_id="m-1", accepted=mark
            )
    assert [m.message_id for m in sink.messages] == ["m-1"]
    assert marks == ["marked"]
