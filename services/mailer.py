"""Email over real SMTP (aiosmtplib), plus the loopback SMTP sink the demo and tests read.

Each message's ``Message-ID`` is derived from the event that caused it, so even a resend after a
crash is recognisable as the same message by the receiving side.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from email.mime.text import MIMEText
from email.parser import BytesParser
from email.policy import SMTP as SMTP_POLICY
from email.policy import compat32
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from pizzashop.core.errors import DeliveryFailed, NotSent, ValidationFailed
from pizzashop.core.lifecycle import Resource, State
from pizzashop.core.net import free_port
from pizzashop.core.settings import SmtpSettings

logger = logging.getLogger(__name__)


class Mailer(Resource):
    """Sends messages over a small pool of kept-open SMTP connections.

    A connection is opened when a send needs one and none is idle, reused after each message,
    and dropped after any error, so a restarted server costs one failed send per connection,
    never a wedged client. ``stop()`` closes the idle ones.

    Duplicates after a crash: a message the server accepted (its 250) but that the caller had
    not marked sent yet goes out again on redelivery. ``send`` runs the caller's ``accepted``
    callback (the mark) right after the 250, and at most ``smtp.max_unconfirmed`` messages may
    be between their final ``DATA`` and that mark at once, so a crash repeats at most that many
    messages (one by default), each with its original ``Message-ID``. The envelope (``MAIL``,
    ``RCPT``) of up to ``smtp.connections`` messages proceeds concurrently meanwhile.
    """

    def __init__(self, settings: SmtpSettings) -> None:
        self._settings = settings
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(settings.connections)
        self._unconfirmed = asyncio.Semaphore(settings.max_unconfirmed)

    async def _start(self) -> None:
        """Connections open on demand: the shop starts while the mail server is away."""

    async def _stop(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            await _close(client)

    async def send(
        self,
        *,
        to: str,
        subject: str,
        body: str,
        message_id: str,
        accepted: Callable[[], Awaitable[None]] | None = None,
        before_data: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Send one message; ``accepted`` runs once the server took it, before anything else
        may be accepted beyond ``max_unconfirmed``. ``before_data`` runs right before the
        message is handed over and may veto it by raising ``NotSent``.

        Raises ``NotSent`` when the message certainly did not go out (the connection or the
        envelope failed, or the server answered the message with an error) and plain
        ``DeliveryFailed`` when it may have (the connection broke while handing it over)."""
        content = compose(self._settings.sender, to, subject, body, message_id)
        async with self._slots:
            client = self._idle.pop() if self._idle else None
            handed_over = False
            # Between DATA's 354 and the message's reply the session only takes the message:
            # a QUIT then would be read as part of it, so such a connection is cut instead.
            in_data = False
            try:
                if client is None or not client.is_connected:
                    client = await self._connect()
                await client.mail(self._settings.sender)
                await client.rcpt(to)
                # DATA's own round trip (the 354) hands nothing over: it stays out of the
                # unconfirmed window, which is what paces the sends (max_unconfirmed / its
                # length), so that window is one round trip (the content, its 250) plus the mark.
                await _start_data(client)
                in_data = True
                async with self._unconfirmed:
                    if before_data is not None:
                        await before_data()
                    handed_over = True
                    await _hand_over(client, content, self._settings.timeout_s)
                    in_data = False
                    if accepted is not None:
                        await accepted()
            except aiosmtplib.SMTPRecipientRefused as exc:
                await _close(client)  # type: ignore[arg-type]  # the envelope is half open
                raise ValidationFailed(f"SMTP server refused recipient {to}: {exc}") from exc
            except NotSent:
                await _close(client, cut=in_data)  # type: ignore[arg-type]  # half open
                raise
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                if client is not None:
                    await _close(client, cut=in_data)
                # An error reply to the message itself (451, 554...) is a refusal; a broken
                # connection after the hand-over may have come after the server took it.
                certain = not handed_over or (
                    isinstance(exc, aiosmtplib.SMTPResponseException)
                    and not isinstance(exc, aiosmtplib.SMTPServerDisconnected)
                )
                kind = NotSent if certain else DeliveryFailed
                raise kind(f"SMTP delivery to {to} failed: {exc}") from exc
            except BaseException:  # the caller's callback failed, or the send was cancelled
                if client is not None:
                    client.close()  # in an unknown state: never back to the pool
                raise
            self._idle.append(client)

    async def _connect(self) -> aiosmtplib.SMTP:
        settings = self._settings
        client = aiosmtplib.SMTP(
            hostname=settings.host, port=settings.port, timeout=settings.timeout_s
        )
        await client.connect()
        if settings.username:
            password = settings.password.get_secret_value() if settings.password else ""
            await client.login(settings.username, password)
        return client


def compose(sender: str, to: str, subject: str, body: str, message_id: str) -> bytes:
    """The message as sent: plain text, ``Message-ID`` derived from its cause.

    Plain ASCII with short one-line headers (every receipt and notice so far) is written out
    directly, byte for byte as the compat32 ``MIMEText`` below writes it; other plain ASCII is
    built with that ``MIMEText``: the
    modern ``EmailMessage`` parses each header it is given back through its header registry,
    and that was about 70% of a send's CPU (py-spy) and 4x the time of this. Anything else, or
    a line break in a header (an injection), goes through ``EmailMessage``, which encodes the
    first and refuses the second."""
    headers = {
        "From": sender,
        "To": to,
        "Subject": subject,
        "Message-ID": f"<{message_id}@pizzashop>",
    }
    if body.isascii() and "\r" not in body:
        lines = [f"{name}: {value}" for name, value in headers.items()]
        if all(len(line) <= _MAX_HEADER_LINE and _SIMPLE_HEADER.match(line) for line in lines):
            # What MIMEText writes below for these (each header on one line, as is; the body's
            # line breaks CRLF), without building and flattening a Message, which was a tenth
            # of the notification flow's CPU (py-spy) once the marks no longer paced it.
            # tests/unit/test_mail_compose.py holds these bytes to MIMEText's.
            text = body if body.endswith("\n") else body + "\n"
            return (
                _PLAIN_PREAMBLE
                + "\r\n".join(lines).encode("ascii")
                + b"\r\n\r\n"
                + text.replace("\n", "\r\n").encode("ascii")
            )
    plain = all(v.isascii() and "\r" not in v and "\n" not in v for v in headers.values())
    if plain and body.isascii():
        # Ending in a line break, as EmailMessage.set_content makes it.
        simple = MIMEText(body if body.endswith("\n") else body + "\n", "plain", "us-ascii")
        for name, value in headers.items():
            simple[name] = value
        return simple.as_bytes(policy=_COMPAT32_SMTP)
    message = EmailMessage()
    for name, value in headers.items():
        message[name] = value
    message.set_content(body)
    return message.as_bytes(policy=SMTP_POLICY)


_COMPAT32_SMTP = compat32.clone(linesep="\r\n")
_PLAIN_PREAMBLE = (
    b'Content-Type: text/plain; charset="us-ascii"\r\n'
    b"MIME-Version: 1.0\r\nContent-Transfer-Encoding: 7bit\r\n"
)
# A header compat32 writes as it is: under its fold width, printable ASCII words separated by
# single spaces (a run of blanks, a tab or a line break it would fold or re-space).
_MAX_HEADER_LINE = 78
_SIMPLE_HEADER = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*\Z")


async def _start_data(client: aiosmtplib.SMTP) -> None:
    """``DATA``, up to the server's 354 (go ahead): the first half of ``SMTP.data``."""
    response = await client.execute_command(b"DATA")
    if response.code != aiosmtplib.SMTPStatus.start_input:
        raise aiosmtplib.SMTPDataError(response.code, response.message)


async def _hand_over(client: aiosmtplib.SMTP, content: bytes, timeout_s: float) -> None:
    """The message after ``_start_data``, up to the server's 250: the second half of
    ``SMTP.data`` (line endings made CRLF, leading dots doubled, the final dot line), split off
    so that only it counts as unconfirmed. The connection is this send's alone (the pool's slot),
    so nothing else may write to it or read its reply meanwhile."""
    protocol = client.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    payload = _LEADING_DOT.sub(b"..", _LINE_ENDINGS.sub(b"\r\n", content))
    if not payload.endswith(b"\r\n"):
        payload += b"\r\n"
    # No await between the write and read_response: the reply cannot arrive before its reader.
    protocol.write(payload + b".\r\n")
    try:
        response = await protocol.read_response(timeout=timeout_s)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        client.close()
        raise
    if response.code != aiosmtplib.SMTPStatus.completed:
        raise aiosmtplib.SMTPDataError(response.code, response.message)


_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT = re.compile(rb"(?m)^\.")


async def _close(client: aiosmtplib.SMTP, *, cut: bool = False) -> None:
    """QUIT and close; ``cut``: close at once (the session is mid-message)."""
    if cut:
        client.close()
        return
    try:
        if client.is_connected:
            await asyncio.wait_for(client.quit(), timeout=1.0)
    except Exception:  # closing a broken connection: nothing left to do with it
        client.close()


@dataclass(frozen=True, slots=True)
class ReceivedMail:
    sender: str
    recipients: tuple[str, ...]
    subject: str
    message_id: str
    body: str
    received_at: float = 0.0  # wall clock (time.time()) when the server took the message


@dataclass(slots=True)
class _Collector:
    messages: list[ReceivedMail] = field(default_factory=list)
    temporary_failures: int = 0
    log_path: Path | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.temporary_failures > 0:
            self.temporary_failures -= 1
            return "451 Requested action aborted: try again later"
        parsed = BytesParser(policy=default_policy).parsebytes(envelope.content)
        body = parsed.get_body(preferencelist=("plain",))
        mail = ReceivedMail(
            sender=envelope.mail_from,
            recipients=tuple(envelope.rcpt_tos),
            subject=str(parsed["Subject"]),
            message_id=str(parsed["Message-ID"]).strip("<>").split("@")[0],
            body=body.get_content() if body is not None else "",
            received_at=time.time(),
        )
        if self.log_path is not None:
            # Written before the 250 goes out: a message the sender saw accepted is in the log.
            line = {k: v for k, v in asdict(mail).items() if k != "body"}
            with self.log_path.open("a", encoding="utf-8") as log:
                log.write(json.dumps(line) + "\n")
        self.messages.append(mail)
        return "250 Message accepted for delivery"


class _CuttingController(Controller):
    """An aiosmtpd ``Controller`` that aborts its open sessions' connections when it stops.
    Its own stop cancels the sessions' tasks and closes the listener, and Python 3.11's
    ``Server.wait_closed`` does not wait for connections: a session whose task was cancelled
    before it ran, or whose socket still had a reply to flush, kept its socket past the loop's
    end, and the garbage collector's ``ResourceWarning`` then failed whatever test ran next."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()

    def factory(self) -> SMTP:
        session: SMTP = super().factory()  # type: ignore[no-untyped-call]
        self._sessions.add(session)
        return session

    def cancel_tasks(self, stop_loop: bool = True) -> None:
        # In the server's loop; the sockets close as it finishes, before it is closed.
        for session in list(self._sessions):
            if isinstance(session.transport, asyncio.Transport):
                session.transport.abort()
        super().cancel_tasks(stop_loop)


class SmtpSink(Resource):
    """A real SMTP server (aiosmtpd) on loopback that keeps what it receives in memory.

    ``temporary_failures`` makes it answer the first N messages with 451 (try again later), as
    a busy mail server does, to exercise the sender's retries. ``log_path`` also appends one
    JSON line per accepted message (sender, recipients, subject, Message-ID, time).

    ``suspend()`` takes the server down as an outage does (the port refuses connections, open
    sessions are cut); ``resume()`` serves again on the same port with the same log. ``stop()``
    is final: a stopped sink refuses to start again.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        temporary_failures: int = 0,
        log_path: Path | None = None,
    ) -> None:
        self._collector = _Collector(temporary_failures=temporary_failures, log_path=log_path)
        self._host = host
        self._port = port or free_port(host)
        self._controller: _CuttingController | None = None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def messages(self) -> list[ReceivedMail]:
        return self._collector.messages

    @property
    def serving(self) -> bool:
        return self._controller is not None

    async def _start(self) -> None:
        await self._serve()

    async def _stop(self) -> None:
        await self._halt()

    async def suspend(self) -> None:
        """Stop serving until ``resume()``: connections to the port are refused meanwhile."""
        await self._halt()

    async def resume(self) -> None:
        """Serve again on the same port, after ``suspend()`` (on a new sink: start it)."""
        if self.state is State.NEW:
            await self.start()
            return
        self._check_running()  # a stopped sink refuses to serve again
        await self._serve()

    async def _serve(self) -> None:
        if self._controller is not None:
            return
        # An aiosmtpd Controller closes its event loop when stopped: one per serving period.
        controller = _CuttingController(self._collector, hostname=self._host, port=self._port)
        # Controller.start blocks until its thread serves: keep the event loop free meanwhile.
        await asyncio.to_thread(controller.start)
        self._controller = controller

    async def _halt(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            await asyncio.to_thread(controller.stop)
