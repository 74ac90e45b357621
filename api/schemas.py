"""Response bodies of the API (requests are the intake's ``OrderRequest``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class OrderConfirmed(BaseModel):
    status: Literal["Confirmed"]
    order_id: str
    duplicate: bool = False


class TimelineEntryOut(BaseModel):
    event_type: str
    event_id: str
    occurred_at: datetime
    detail: dict[str, Any] = Field(
        description="what the event adds (reason, amount, ready_by, recipient...); e-mail "
        "addresses are masked (`c***@example.com`)"
    )


class OrderStatusOut(BaseModel):
    order_id: str
    status: str
    final: bool
    total: str
    currency: str
    placed_at: datetime
    timeline: list[TimelineEntryOut]


class ErrorOut(BaseModel):
    """Every refusal but 422: what went wrong, in words."""

    detail: str


class ProblemOut(BaseModel):
    """One thing wrong with a request."""

    loc: list[str | int] = Field(
        description='where: a path into the request, e.g. ["body", "items", 0, "quantity"]'
    )
    msg: str = Field(description="what is wrong, in words")
    type: str = Field(description="what is wrong, for machines (e.g. `unknown_item`, `missing`)")


class ValidationProblemsOut(BaseModel):
    """A 422: the request was understood but is not a valid order; every problem is listed."""

    detail: str = Field(description="every problem in one line, `; `-separated")
    problems: list[ProblemOut] = Field(min_length=1)
