"""The message bytes a receipt goes out as: the fast ASCII path reads back exactly as the
``EmailMessage`` path does, anything else takes that path, and a header with a line break in
it is refused rather than sent as two headers."""

from __future__ import annotations

from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import SMTP, default

import pytest

from services.mailer import compose
from services.notification import render_receipt
from tests.support.orders import make_order


def _reference(sender: str, to: str, subject: str, body: str, message_id: str) -> bytes:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, to, subject
    message["Message-ID"] = f"<{message_id}@pizzashop>"
    message.set_content(body)
    return message.as_bytes(policy=SMTP)


def _read(raw: bytes) -> tuple[dict[str, str], str]:
    parsed = BytesParser(policy=default).parsebytes(raw)
    part = parsed.get_body(preferencelist=("plain",))
    assert part is not None
    headers = {k: str(parsed[k]) for k in ("From", "To", "Subject", "Message-ID")}
    return headers, part.get_content()


@pytest.mark.parametrize(
    ("to", "subject", "body"),
    [
        ("alice@example.com", None, None),  # a real receipt
        ("bob@example.com", "Refund for order o-1", "We refunded 9.50 USD.\nReason: burnt.\n"),
        ("zoë@example.com", "Ihre Quittung", "Grüße\n"),  # not ASCII: the EmailMessage path
    ],
)
def test_compose_reads_back_as_the_email_message_would(
    to: str, subject: str | None, body: str | None
) -> None:
    if subject is None or body is None:
        subject, body = render_receipt(make_order())
    ours = compose("receipts@pizzashop.local", to, subject, body, "m-1")
    reference = _reference("receipts@pizzashop.local", to, subject, body, "m-1")
    assert _read(ours) == _read(reference)
    assert b"\r\n" in ours and b"\n" not in ours.replace(b"\r\n", b"")  # SMTP line endings


def test_a_line_break_in_a_header_is_refused() -> None:
    with pytest.raises(ValueError, match="linefeed or carriage return"):
        compose("receipts@pizzashop.local", "a@example.com\nBcc: x@evil.example", "s", "b", "m")
