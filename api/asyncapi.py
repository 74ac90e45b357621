"""``GET /asyncapi.json``: the shop's event contract for other teams (AsyncAPI 3).

Serves the committed document (``ingest/schemas/asyncapi.json``, written by
``pizzashop schemas export`` and kept in step by a unit test), read once, so the API neither
imports the flows nor rebuilds it per request.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from fastapi import APIRouter

from ingest.schemas.asyncapi import ASYNCAPI_PATH

router = APIRouter()


@cache
def _document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(ASYNCAPI_PATH.read_text("utf-8"))
    return document


@router.get("/asyncapi.json", tags=["contract"], summary="AsyncAPI 3 document of every event")
async def asyncapi() -> dict[str, Any]:
    return _document()
