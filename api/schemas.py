"""Response bodies of the API (requests are the intake's ``OrderRequest``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel


class OrderConfirmed(BaseModel):
    status: Literal["Confirmed"]
    order_id: str
    duplicate: bool = False


class TimelineEntryOut(BaseModel):
    event_type: str
    event_id: str
    occurred_at: datetime
    detail: dict[str, Any]


class OrderStatusOut(BaseModel):
    order_id: str
    status: str
    final: bool
    total: str
    currency: str
    placed_at: datetime
    timeline: list[TimelineEntryOut]
