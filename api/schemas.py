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


# -- GET /models --------------------------------------------------------------------------------
class DriftOut(BaseModel):
    """One population stability index of a version's latest scored orders against its
    training data."""

    kind: Literal["score", "input"] = Field(description="the model's score, or one of its inputs")
    feature: str = Field(description="the score's or the input's name")
    psi: float | None = Field(description="none while the window holds too few orders")
    orders: int = Field(description="orders in the window")
    alert: bool = Field(description="psi at or above the alert threshold")


class OnlineOut(BaseModel):
    """A fraud version judged by chargebacks, on matured orders (placed long enough before
    the latest chargeback for theirs to have come)."""

    role: Literal["champion", "shadow"] = Field(
        description="it decided (champion), or scored beside the champion deciding nothing"
    )
    orders: int = Field(description="matured orders it scored")
    chargebacks: int = Field(description="of them, charged back")
    held: int = Field(description="of them, at or above its hold threshold")
    caught: int = Field(description="held and charged back")
    threshold: float | None = Field(
        description="the hold threshold judged (a shadow's own); none: the decisions made"
    )
    precision: float | None = Field(description="caught / held; none when nothing was held")
    recall: float | None = Field(description="caught / chargebacks; none without chargebacks")


class ModelVersionOut(BaseModel):
    version: int
    created_at: str
    aliases: list[Literal["champion", "challenger"]] = Field(
        description="the registry aliases on it; the champion also when it serves by default"
    )
    metrics: dict[str, float] = Field(description="what training measured")
    drift: list[DriftOut]
    drift_alert: bool = Field(description="some PSI of it is at or above the threshold")
    online: list[OnlineOut]


class ModelOut(BaseModel):
    name: str
    champion: int | None = Field(description="the champion alias; none: the latest serves")
    challenger: int | None = Field(description="the challenger alias; none: no shadow")
    serving: int | None = Field(description="the version that decides now")
    versions: list[ModelVersionOut] = Field(description="newest first")


class ModelsOut(BaseModel):
    """Every model in the registry, its aliases and, per version, drift and online quality."""

    psi_alert: float = Field(description="the PSI alert threshold")
    drift_window: int = Field(description="a version's latest scored orders drift is read on")
    chargebacks: int = Field(description="chargebacks received")
    labelled_through: datetime | None = Field(description="the latest chargeback's report time")
    matured_before: datetime | None = Field(
        description="orders placed up to this count in precision and recall"
    )
    models: list[ModelOut]
