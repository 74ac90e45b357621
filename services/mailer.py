"""Email over real SMTP (aiosmtplib), plus the loopback SMTP sink the demo and tests read.

Each message's ``Message-ID`` is derived from the event that caused it, so even a resend after a
crash is recognisable as the same message by the receiving side.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from types import TracebackType
from typing import Any, Self

import aiosmtplib
from aiosmtpd.controller import Controller

from pizzashop.errors import DeliveryFailed, ValidationFailed
from pizzashop.settings import SmtpSettings

logger = logging.getLogger(__name__)


class Mailer:
    """Sends one message per call over a fresh SMTP connection (simple, robust to restarts)."""

    def __init__(self, settings: SmtpSettings) -> None:
        self._settings = settings

    async def send(self, *, to: str, subject: str, body: str, message_id: str) -> None:
        message = EmailMessage()
        message["From"] = self._settings.sender
        message["To"] = to
        message["Subject"] = subject
        message["Message-ID"] = f"<{message_id}@pizzashop>"
        message.set_content(body)
        password = self._settings.password.get_secret_value() if self._settings.password else None
        try:
            await aiosmtplib.send(
                message,
                hostname=self._settings.host,
                port=self._settings.port,
                username=self._settings.username,
                password=password,
                timeout=self._settings.timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise ValidationFailed(f"SMTP server refused recipient {to}: {exc}") from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise DeliveryFailed(f"SMTP delivery to {to} failed: {exc}") from exc


@dataclass(frozen=True, slots=True)
class ReceivedMail:
    sender: str
    recipients: tuple[str, ...]
    subject: str
    message_id: str
    body: str


@dataclass(slots=True)
class _Collector:
    messages: list[ReceivedMail] = field(default_factory=list)
    temporary_failures: int = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.temporary_failures > 0:
            self.temporary_failures -= 1
            return "451 Requested action aborted: try again later"
        parsed = BytesParser(policy=default_policy).parsebytes(envelope.content)
        body = parsed.get_body(preferencelist=("plain",))
        self.messages.append(
            ReceivedMail(
                sender=envelope.mail_from,
                recipients=tuple(envelope.rcpt_tos),
                subject=str(parsed["Subject"]),
                message_id=str(parsed["Message-ID"]).strip("<>").split("@")[0],
                body=body.get_content() if body is not None else "",
            )
        )
        return "250 Message accepted for delivery"


class SmtpSink:
    """A real SMTP server (aiosmtpd) on loopback that keeps what it receives in memory.

    ``temporary_failures`` makes it answer the first N messages with 451 (try again later), as
    a busy mail server does, to exercise the sender's retries.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, temporary_failures: int = 0
    ) -> None:
        self._collector = _Collector(temporary_failures=temporary_failures)
        self._controller = Controller(self._collector, hostname=host, port=port or _free_port(host))
        self._running = False

    @property
    def host(self) -> str:
        return str(self._controller.hostname)

    @property
    def port(self) -> int:
        return int(self._controller.port)

    @property
    def messages(self) -> list[ReceivedMail]:
        return self._collector.messages

    async def start(self) -> None:
        if not self._running:
            # Controller.start blocks until its thread serves: keep the event loop free meanwhile.
            await asyncio.to_thread(self._controller.start)
            self._running = True

    async def stop(self) -> None:
        if self._running:
            await asyncio.to_thread(self._controller.stop)
            self._running = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
