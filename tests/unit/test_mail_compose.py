"""The message bytes a receipt goes out as: the fast ASCII path reads back exactly as the
``EmailMessage`` path does, anything else takes that path, and a header with a line break in
it is refused rather than sent as two headers."""

from __future__ import annotations

from email.message import EmailMessage
from email.mime.text import MIMEText
from email.parser import BytesParser
from email.policy import SMTP, compat32, default

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def _compat32(sender: str, to: str, subject: str, body: str, message_id: str) -> bytes:
    """The message as the compat32 ``MIMEText`` writes it (what the direct path must equal)."""
    message = MIMEText(body if body.endswith("\n") else body + "\n", "plain", "us-ascii")
    message["From"], message["To"], message["Subject"] = sender, to, subject
    message["Message-ID"] = f"<{message_id}@pizzashop>"
    return message.as_bytes(policy=compat32.clone(linesep="\r\n"))


# Words, blanks and runs of them, up to well past the 78 columns where compat32 folds.
_ascii_text = st.lists(
    st.one_of(
        st.sampled_from([" ", "  ", "\t", "word", "x" * 30, "=?", ";"]),
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=8),
    ),
    max_size=12,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(
    to=_ascii_text,
    subject=_ascii_text,
    body=st.lists(st.sampled_from(["a", "Z", " ", ".", "\n", "From ", "x" * 120])).map("".join),
    message_id=st.text(st.sampled_from("abc-019"), min_size=1, max_size=70),
)
def test_ascii_messages_are_byte_for_byte_what_mimetext_writes(
    to: str, subject: str, body: str, message_id: str
) -> None:
    # Long headers, runs of blanks, leading dots and "From " lines, empty bodies: whichever
    # path compose takes, the bytes are compat32's.
    sender = "receipts@pizzashop.local"
    assert compose(sender, to, subject, body, message_id) == _compat32(
        sender, to, subject, body, message_id
    )


def test_a_real_receipt_takes_the_direct_path() -> None:
    subject, body = render_receipt(make_order())
    ours = compose("receipts@pizzashop.local", "alice@example.com", subject, body, "m-1")
    assert ours == _compat32("receipts@pizzashop.local", "alice@example.com", subject, body, "m-1")
    assert ours.startswith(b'Content-Type: text/plain; charset="us-ascii"\r\n')
