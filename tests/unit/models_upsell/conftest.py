from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import numpy as np
import pytest

from models.upsell import HashEmbedder, UpsellModel, train_upsell
from models.upsell.synthetic import SyntheticData, generate_orders, split_by_day
from pizzashop.core.menu import Menu, MenuItem, load_menu


class CountingEmbedder:
    """A HashEmbedder that counts the texts it was asked to embed."""

    def __init__(self, dim: int = 32) -> None:
        self._inner = HashEmbedder(dim)
        self.calls = 0
        self.texts = 0

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def dim(self) -> int:
        return self._inner.dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        self.texts += len(texts)
        return self._inner.embed(texts)


def pizza(product: str, size: str = "M", price: str = "10.00", style: str = "classic") -> MenuItem:
    return MenuItem(
        sku=f"{product}_{size.lower()}",
        product=product,
        name=f"The {product.title()} Pizza",
        category="pizza",
        style=style,
        size=size,
        price=Decimal(price),
        ingredients=(product,),
        description=f"The {product.title()} Pizza ({style}): {product}",
    )


@pytest.fixture(scope="session")
def menu() -> Menu:
    return load_menu()


@pytest.fixture(scope="session")
def synthetic(menu: Menu) -> SyntheticData:
    return generate_orders(menu, n_customers=300, seed=3)


@pytest.fixture(scope="session")
def trained(menu: Menu, synthetic: SyntheticData) -> UpsellModel:
    train, _ = split_by_day(synthetic.orders, 270)
    return train_upsell(
        [o.skus for o in train], [o.customer_id for o in train], menu, HashEmbedder(64)
    )
