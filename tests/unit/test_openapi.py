"""The OpenAPI document keeps its promises: schemathesis, every check, against the app in-process.

The shop runs with no broker (orders are confirmed into the outbox, as when Kafka is away) and
is opened by the app's lifespan inside schemathesis's own ASGI event loop, so its database
connections live where the requests are served. Bounded examples keep it well under a minute.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import positive_data_acceptance
from starlette.types import Receive, Scope, Send

from api.app import create_app
from pizzashop.app.shop import Shop, Wiring
from pizzashop.core.settings import ApiSettings, OutboxSettings, Settings
from tests.support.net import dead_port

KEY = "schemathesis-key-0123456789"

# The shop's background tasks (the relay's back-off jitter, aiokafka) use the global `random` on
# schemathesis's ASGI thread while hypothesis generates the next case on this one; hypothesis
# sees the global state move and blames its strategy. Generation does not depend on it.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)


class ShopApp:
    """The API of a shop that its lifespan opens and closes (no broker, no workers). A shop does
    not reopen, and schemathesis ends the lifespan after each operation: every startup opens a
    new one on the same database."""

    def __init__(self, home: Path) -> None:
        self.settings = Settings(
            kafka_bootstrap=f"127.0.0.1:{dead_port()}",
            home=home,
            api=ApiSettings(
                keys=({"name": "all", "secret": KEY, "scopes": ["inspect", "operate"]},),
            ),
            # no broker: the relay fails once at start, then waits out the test
            outbox=OutboxSettings(retry_base_delay_s=120, retry_max_delay_s=120),
        )
        self.shop: Shop | None = None
        self.app: Any = create_app(self._build())

    def _build(self) -> Shop:
        self.shop = Shop(
            self.settings,
            self.settings.kafka_bootstrap or "",
            Wiring(api=True, workers=(), create_topics=False),
        )
        return self.shop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        shop: Shop | None = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                shop = self._build()
                self.app = create_app(shop)
                await shop.__aenter__()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if shop is not None:
                    await shop.__aexit__(None, None, None)
                await send({"type": "lifespan.shutdown.complete"})
                return


# The app is built at import (building a Shop opens nothing); its lifespan opens the shop at
# the first request. The schema comes from the app itself rather than a fixture: schemathesis's
# lazy fixture loader does not work with pytest 9.
HOME = Path(tempfile.mkdtemp(prefix="pizzashop-openapi-"))
SHOP_APP = ShopApp(HOME)
schema = schemathesis.openapi.from_dict(SHOP_APP.app.openapi())
schema.app = SHOP_APP


@pytest.fixture(scope="module", autouse=True)
def _close_the_shop() -> Iterator[None]:
    yield
    asgi.shutdown_lifespans()  # closes the shop inside the loop that opened it
    shutil.rmtree(HOME, ignore_errors=True)


@schema.parametrize()
@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_the_api_answers_as_its_openapi_document_says(case: Any) -> None:
    load_all_checks()
    checks = list(CHECKS.get_all())
    if case.operation.label == "POST /orders":
        # An order that fits the schema may still be refused (422): its items must be on the
        # menu at the menu's prices, its total their sum, which no JSON Schema can say.
        checks.remove(positive_data_acceptance)
    case.call_and_validate(headers={"X-API-Key": KEY}, checks=checks)
