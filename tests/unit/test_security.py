"""Keys, scopes and limits on their own: the key ring, an operate-scoped route, the body limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.security import BodySizeLimit, Caller, Guard, KeyRing
from pizzashop.core.errors import ConfigError
from pizzashop.core.settings import ApiKey, ApiSettings

OPS = "operator-secret-0123456789"
VIEWER = "viewer-secret-0123456789"


def settings(**overrides: Any) -> ApiSettings:
    keys = [
        {"name": "ops", "secret": OPS, "scopes": ["inspect", "operate"]},
        {"name": "viewer", "secret": VIEWER, "scopes": ["inspect"]},
    ]
    return ApiSettings.model_validate({"keys": keys, **overrides})


def test_the_ring_finds_the_presented_key_and_nothing_else() -> None:
    ring = KeyRing(settings())
    found = ring.find(OPS)
    assert found is not None and found.name == "ops"
    assert ring.find(OPS + "x") is None
    assert ring.find("") is None and ring.find(None) is None
    assert ring.granting("operate") and not ring.granting("place")


def test_the_ring_holds_digests_not_secrets() -> None:
    ring = KeyRing(settings())
    assert OPS not in repr(vars(ring)) and OPS.encode() not in repr(vars(ring)).encode()
    assert OPS not in repr(settings())  # SecretStr


@pytest.mark.parametrize(
    ("keys", "match"),
    [
        ([{"name": "a", "secret": "short", "scopes": ["place"]}], "16 characters"),
        (
            [
                {"name": "a", "secret": OPS, "scopes": ["place"]},
                {"name": "b", "secret": OPS, "scopes": ["inspect"]},
            ],
            "same secret",
        ),
        (
            [
                {"name": "a", "secret": OPS, "scopes": ["place"]},
                {"name": "a", "secret": VIEWER, "scopes": ["inspect"]},
            ],
            "distinct names",
        ),
    ],
)
def test_bad_keys_are_refused_without_echoing_them(keys: list[Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as caught:
        KeyRing(ApiSettings(keys=tuple(ApiKey.model_validate(k) for k in keys)))
    assert OPS not in str(caught.value) and "short" not in str(caught.value).replace("shorter", "")


def test_a_bad_rate_limit_is_a_settings_error() -> None:
    with pytest.raises(ValueError, match="granularity"):
        ApiSettings(rate_limit_per_address="5/fortnight")


OPERATOR = Guard(settings()).requires("operate")


@pytest.fixture
async def operate_app() -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()

    @app.post("/dlq/replay")
    async def replay(caller: Annotated[Caller, Depends(OPERATOR)]) -> dict[str, Any]:
        return {"by": caller.key}

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://shop"
    ) as http:
        yield http


async def test_operating_needs_the_operate_scope(operate_app: httpx.AsyncClient) -> None:
    assert (await operate_app.post("/dlq/replay")).status_code == 401
    wrong = await operate_app.post("/dlq/replay", headers={"X-API-Key": "no-such-key-0000000"})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "the API key is not valid"
    viewer = await operate_app.post("/dlq/replay", headers={"X-API-Key": VIEWER})
    assert viewer.status_code == 403
    ops = await operate_app.post("/dlq/replay", headers={"X-API-Key": OPS})
    assert ops.status_code == 200 and ops.json() == {"by": "ops"}


async def test_the_security_scheme_is_in_the_openapi_document(
    operate_app: httpx.AsyncClient,
) -> None:
    document = (await operate_app.get("/openapi.json")).json()
    scheme = document["components"]["securitySchemes"]["ApiKey"]
    assert scheme == {**scheme, "type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert document["paths"]["/dlq/replay"]["post"]["security"] == [{"ApiKey": []}]


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse({"size": len(await request.body())})


@pytest.fixture
async def plain() -> AsyncIterator[httpx.AsyncClient]:
    """A plain Starlette app: no FastAPI handler answers the 413, the middleware does."""
    app = BodySizeLimit(Starlette(routes=[Route("/", _echo, methods=["POST"])]), max_bytes=100)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://shop"
    ) as http:
        yield http


async def test_the_body_limit_by_content_length_and_by_counting(
    plain: httpx.AsyncClient,
) -> None:
    assert (await plain.post("/", content=b"x" * 100)).json() == {"size": 100}
    declared = await plain.post("/", content=b"x" * 101)
    assert declared.status_code == 413 and "100 bytes" in declared.json()["detail"]

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"x" * 30

    streamed = await plain.post("/", content=chunks())
    assert streamed.status_code == 413
    lying = await plain.post("/", content=b"x" * 50, headers={"content-length": "nope"})
    assert lying.status_code == 400
