"""Order features: one code path for training and serving, vectorised over a batch.

A batch goes ``OrderFrame.from_orders`` (columns) → ``basket_features`` (pure NumPy, no state)
→ ``stateful_features`` (per customer, card, device and address, read from a
``FeatureStateStore`` snapshot). Point-in-time rule: an order's features see only the state
*before* it, and orders within one batch see the earlier orders of the same batch, in order.
Idempotence: the state remembers each order id with the features it got, so a redelivered order
gets the very same vector back and is never counted twice.

Times are the shop's wall clock, which the shop keeps in UTC.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ingest.events import Address, OrderPlaced
from models.catalog import CATEGORIES, load_catalog

FEATURE_SCHEMA_VERSION = 2
WINDOW_SHORT_S = 600.0
WINDOW_HOUR_S = 3_600.0
WINDOW_LONG_S = 86_400.0
_GAP_CAP_MIN = WINDOW_LONG_S / 60.0  # "no earlier order within the window" reads as a day
CHANNELS: tuple[str, ...] = ("web", "app", "phone", "walk_in")

BASKET_FEATURES: tuple[str, ...] = (
    "log_total",
    "log_units",
    "n_lines",
    "max_qty",
    "max_price_dev",
    "unknown_skus",
    "share_pizza",
    "share_side",
    "share_drink",
    "share_dessert",
    "share_large_pizza",
    "has_pineapple",
    "hour_sin",
    "hour_cos",
    "dow_sin",
    "dow_cos",
    "channel_web",
    "channel_app",
    "channel_phone",
    "channel_walk_in",
    "has_address",
    "has_device",
    "pay_card",
    "pay_voucher",
)
STATEFUL_FEATURES: tuple[str, ...] = (
    "cust_orders_10m",
    "cust_spend_10m",
    "cust_orders_24h",
    "cust_spend_24h",
    "card_orders_10m",
    "card_spend_10m",
    "card_orders_24h",
    "card_spend_24h",
    "card_other_customers_24h",
    "device_other_customers_24h",
    "address_other_customers_24h",
    "cust_prior_orders",
    "spend_vs_usual",
    "new_customer",
    "new_card_for_customer",
    "new_address_for_customer",
    "new_device_for_customer",
    # schema 2: velocities and gaps per card and device, the customer's own rhythm
    "card_orders_1h",
    "card_log_gap_min",
    "device_orders_1h",
    "device_orders_24h",
    "device_log_gap_min",
    "address_orders_24h",
    "cust_log_gap_min",
    "new_links_for_customer",
    "cust_novel_orders_24h",
    "cust_novel_log_gap_min",
)
FEATURE_NAMES: tuple[str, ...] = BASKET_FEATURES + STATEFUL_FEATURES
N_FEATURES = len(FEATURE_NAMES)
_N_BASKET = len(BASKET_FEATURES)

# Features that mean the same thing in any world, by what they describe. The fraud model reads
# only these: basket mix, channel and weekday describe one shop's menu and customers (a stolen
# card buying large pizzas is this simulator's habit, not fraud's), and a model that learned
# them failed on another generator's traffic. The anomaly model reads every feature.
FRAUD_FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "order": ("log_total", "hour_sin", "hour_cos", "has_address", "has_device"),
    "payment": ("pay_card", "pay_voucher"),
    "history": ("cust_prior_orders", "new_customer"),
    "novelty": (
        "new_card_for_customer",
        "new_address_for_customer",
        "new_device_for_customer",
        "new_links_for_customer",
        "cust_novel_orders_24h",
        "cust_novel_log_gap_min",
    ),
    "relative_spend": ("spend_vs_usual",),
    "velocity": (
        "cust_orders_10m",
        "cust_spend_10m",
        "cust_orders_24h",
        "cust_spend_24h",
        "cust_log_gap_min",
        "card_orders_10m",
        "card_spend_10m",
        "card_orders_1h",
        "card_orders_24h",
        "card_spend_24h",
        "card_log_gap_min",
        "device_orders_1h",
        "device_orders_24h",
        "device_log_gap_min",
        "address_orders_24h",
    ),
    "sharing": (
        "card_other_customers_24h",
        "device_other_customers_24h",
        "address_other_customers_24h",
    ),
}
FRAUD_FEATURES: tuple[str, ...] = tuple(
    name for group in FRAUD_FEATURE_GROUPS.values() for name in group
)

ENTITY_KINDS: tuple[str, ...] = ("customer", "card", "device", "address", "novel")
# "novel" events are keyed by customer id and record only the orders that brought the customer a
# card, device or address it had not used before: a takeover's *second* order no longer looks
# new (the first one linked its device), but it follows a novel order by minutes. Kept in the
# same entity-event tables as the others, so neither store's schema changes.
NOVEL = "novel"
LINK_KINDS: tuple[str, ...] = ("card", "device", "address")


def address_key(address: Address) -> str:
    """A stable key for a delivery address (normalised, hashed: the state keeps no PII)."""
    raw = "|".join(
        part.strip().lower() for part in (address.street, address.postcode, address.country)
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class OrderFrame:
    """A batch of orders as columns. Items are flattened; ``item_order`` maps item → order."""

    order_id: tuple[str, ...]
    customer_id: tuple[str, ...]
    ts: np.ndarray  # float64 epoch seconds
    total: np.ndarray  # float64
    card: tuple[str | None, ...]
    device: tuple[str | None, ...]
    address: tuple[str | None, ...]
    channel: np.ndarray  # int8 into CHANNELS
    pay_kind: np.ndarray  # int8: 0 card, 1 cash, 2 voucher
    hour: np.ndarray  # float64, fractional hour of day
    weekday: np.ndarray  # int8, Monday = 0
    item_order: np.ndarray  # int32 [n_items]
    item_sku: np.ndarray  # int32 [n_items], -1 when the SKU is not on the menu
    item_qty: np.ndarray  # float64 [n_items]
    item_price: np.ndarray  # float64 [n_items]

    def __len__(self) -> int:
        return len(self.order_id)

    @classmethod
    def from_orders(cls, orders: Sequence[OrderPlaced]) -> OrderFrame:
        index = load_catalog().sku_index
        item_order: list[int] = []
        item_sku: list[int] = []
        item_qty: list[int] = []
        item_price: list[float] = []
        for i, order in enumerate(orders):
            for item in order.items:
                item_order.append(i)
                item_sku.append(index.get(item.sku, -1))
                item_qty.append(item.quantity)
                item_price.append(float(item.unit_price))
        pay = {"card": 0, "cash": 1, "voucher": 2}
        return cls(
            order_id=tuple(o.order_id for o in orders),
            customer_id=tuple(o.customer_id for o in orders),
            ts=np.array([o.placed_at.timestamp() for o in orders], dtype=np.float64),
            total=np.array([float(o.total) for o in orders], dtype=np.float64),
            card=tuple(o.payment.card_fingerprint for o in orders),
            device=tuple(o.device_id for o in orders),
            address=tuple(
                None if o.delivery_address is None else address_key(o.delivery_address)
                for o in orders
            ),
            channel=np.array([CHANNELS.index(o.channel) for o in orders], dtype=np.int8),
            pay_kind=np.array([pay[o.payment.kind] for o in orders], dtype=np.int8),
            hour=np.array(
                [
                    o.placed_at.hour + o.placed_at.minute / 60 + o.placed_at.second / 3600
                    for o in orders
                ],
                dtype=np.float64,
            ),
            weekday=np.array([o.placed_at.weekday() for o in orders], dtype=np.int8),
            item_order=np.array(item_order, dtype=np.int32),
            item_sku=np.array(item_sku, dtype=np.int32),
            item_qty=np.array(item_qty, dtype=np.float64),
            item_price=np.array(item_price, dtype=np.float64),
        )


def basket_features(frame: OrderFrame) -> np.ndarray:
    """The stateless columns, [n, len(BASKET_FEATURES)] float32, fully vectorised."""
    cat = load_catalog()
    n = len(frame)
    out = np.zeros((n, _N_BASKET), dtype=np.float64)
    if n == 0:
        return out.astype(np.float32)
    o, sku, qty = frame.item_order, frame.item_sku, frame.item_qty
    known = sku >= 0
    safe = np.where(known, sku, 0)
    menu_price = cat.price[safe]
    # unknown SKUs count as a full deviation so they never look cheaper than a known one
    dev = np.where(known, np.abs(frame.item_price / menu_price - 1.0), 1.0)
    units = np.bincount(o, weights=qty, minlength=n)
    category = np.where(known, cat.category[safe], -1)
    out[:, 0] = np.log1p(frame.total)
    out[:, 1] = np.log1p(units)
    out[:, 2] = np.bincount(o, minlength=n)
    max_qty = np.zeros(n)
    np.maximum.at(max_qty, o, qty)
    out[:, 3] = max_qty
    max_dev = np.zeros(n)
    np.maximum.at(max_dev, o, np.minimum(dev, 50.0))
    out[:, 4] = max_dev
    out[:, 5] = np.bincount(o, weights=(~known).astype(np.float64), minlength=n)
    safe_units = np.maximum(units, 1.0)
    for c in range(len(CATEGORIES)):
        out[:, 6 + c] = np.bincount(o, weights=qty * (category == c), minlength=n) / safe_units
    pizza_units = np.bincount(o, weights=qty * (category == 0), minlength=n)
    large = known & (cat.size[safe] >= 2)
    out[:, 10] = np.bincount(o, weights=qty * large, minlength=n) / np.maximum(pizza_units, 1.0)
    out[:, 11] = (
        np.bincount(o, weights=(known & cat.pineapple[safe]).astype(float), minlength=n) > 0
    )
    angle = 2 * np.pi * frame.hour / 24.0
    out[:, 12], out[:, 13] = np.sin(angle), np.cos(angle)
    dow = 2 * np.pi * frame.weekday / 7.0
    out[:, 14], out[:, 15] = np.sin(dow), np.cos(dow)
    out[np.arange(n), 16 + frame.channel] = 1.0
    out[:, 20] = [a is not None for a in frame.address]
    out[:, 21] = [d is not None for d in frame.device]
    out[:, 22] = frame.pay_kind == 0
    out[:, 23] = frame.pay_kind == 2
    return out.astype(np.float32)


# -- state ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntityEvent:
    """One past order as seen from one entity (a customer, card, device or address)."""

    order_id: str
    ts: float
    total: float
    customer_id: str


@dataclass(frozen=True, slots=True)
class OrderFacts:
    """Everything the state keeps about one scored order. Applying it twice is a no-op."""

    order_id: str
    customer_id: str
    ts: float
    total: float
    features: np.ndarray  # float32 [N_FEATURES], what this order got
    entities: tuple[tuple[str, str], ...]  # (kind, id) for ENTITY_KINDS present
    links: tuple[tuple[str, str], ...]  # (kind, value) tied to the customer


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """An order the state knows of but the batch does not compute, replayed in event time.

    ``links`` is None when only some of its entities matter to the batch (another customer's
    order on a card of the batch): then it adds events and nothing about its customer.
    """

    order_id: str
    customer_id: str
    ts: float
    total: float
    entities: tuple[tuple[str, str], ...]  # (kind, id), without NOVEL (replay derives it)
    links: tuple[tuple[str, str], ...] | None


@dataclass(slots=True)
class StateSnapshot:
    """The part of the state one batch needs. Mutated while the batch is computed.

    ``pending``, sorted by (ts, order id): known orders that are not in the base state; each is
    applied just before the first order of the batch that comes after it in event time, so an
    order sees exactly the orders placed before it (``SqlFeatureState``'s event-time reads).
    """

    seen: dict[str, np.ndarray]  # order id → features it got
    events: dict[tuple[str, str], list[EntityEvent]]  # (kind, id) → recent events
    customers: dict[str, tuple[int, float]]  # customer id → (orders, spend)
    links: set[tuple[str, str, str]]  # (customer id, kind, value)
    pending: list[LedgerEntry] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StateQuery:
    """What a batch asks the store for."""

    order_ids: tuple[str, ...]
    customer_ids: tuple[str, ...]
    entities: tuple[tuple[str, str], ...]
    since: float  # oldest event timestamp any order of the batch can see
    until: float = math.inf  # the latest order of the batch


def order_entities(frame: OrderFrame, i: int) -> tuple[tuple[str, str], ...]:
    """The (kind, id) of order ``i``'s customer, card, device and address (those present)."""
    return _entities(frame, i)


def _entities(frame: OrderFrame, i: int) -> tuple[tuple[str, str], ...]:
    keys = [("customer", frame.customer_id[i])]
    for kind, value in (
        ("card", frame.card[i]),
        ("device", frame.device[i]),
        ("address", frame.address[i]),
    ):
        if value is not None:
            keys.append((kind, value))
    return tuple(keys)


def state_query(frame: OrderFrame) -> StateQuery:
    entities = sorted(
        {key for i in range(len(frame)) for key in _entities(frame, i)}
        | {(NOVEL, cid) for cid in frame.customer_id}
    )
    since = float(frame.ts.min()) - WINDOW_LONG_S if len(frame) else 0.0
    return StateQuery(
        order_ids=tuple(sorted(set(frame.order_id))),
        customer_ids=tuple(sorted(set(frame.customer_id))),
        entities=tuple(entities),
        since=since,
        until=float(frame.ts.max()) if len(frame) else 0.0,
    )


def _window(events: list[EntityEvent], t: float, span: float) -> tuple[int, float, set[str]]:
    n, spend, who = 0, 0.0, set()
    for e in events:
        if t - span < e.ts <= t:
            n += 1
            spend += e.total
            who.add(e.customer_id)
    return n, spend, who


def _log_gap(events: list[EntityEvent], t: float) -> float:
    """log1p of the minutes since the entity's latest earlier order within the long window."""
    last = max((e.ts for e in events if t - WINDOW_LONG_S < e.ts <= t), default=None)
    minutes = _GAP_CAP_MIN if last is None else min((t - last) / 60.0, _GAP_CAP_MIN)
    return math.log1p(minutes)


def stateful_features(
    frame: OrderFrame, basket: np.ndarray, snap: StateSnapshot
) -> tuple[np.ndarray, list[OrderFacts]]:
    """Features for the whole batch and the facts to store, in stream order.

    Per-entity windows are short lists (24 hours of one card), so the loop is over orders and
    each step is a handful of small scans; the heavy columns are already vectorised.
    """
    n = len(frame)
    out = np.zeros((n, N_FEATURES), dtype=np.float32)
    out[:, :_N_BASKET] = basket
    facts: list[OrderFacts] = []
    pending = snap.pending
    next_pending = 0
    for i in range(n):
        oid = frame.order_id[i]
        while next_pending < len(pending) and (
            pending[next_pending].ts,
            pending[next_pending].order_id,
        ) < (float(frame.ts[i]), oid):
            apply_pending(snap, pending[next_pending])
            next_pending += 1
        known = snap.seen.get(oid)
        if known is not None:  # a redelivery: same answer, no double count
            out[i] = known
            continue
        t, total, cid = float(frame.ts[i]), float(frame.total[i]), frame.customer_id[i]
        entities = _entities(frame, i)
        row = out[i]
        cust = snap.events.get(("customer", cid), [])
        n10, s10, _ = _window(cust, t, WINDOW_SHORT_S)
        n24, s24, _ = _window(cust, t, WINDOW_LONG_S)
        col = _N_BASKET
        row[col : col + 4] = (n10, math.log1p(s10), n24, math.log1p(s24))
        card = frame.card[i]
        if card is not None:
            events = snap.events.get(("card", card), [])
            c10, cs10, _ = _window(events, t, WINDOW_SHORT_S)
            c24, cs24, who = _window(events, t, WINDOW_LONG_S)
            row[col + 4 : col + 9] = (
                c10,
                math.log1p(cs10),
                c24,
                math.log1p(cs24),
                len(who - {cid}),
            )
        for j, kind in ((col + 9, "device"), (col + 10, "address")):
            value = frame.device[i] if kind == "device" else frame.address[i]
            if value is not None:
                _, _, who = _window(snap.events.get((kind, value), []), t, WINDOW_LONG_S)
                row[j] = len(who - {cid})
        prior, spend = snap.customers.get(cid, (0, 0.0))
        row[col + 11] = math.log1p(prior)
        row[col + 12] = math.log(max(total, 0.01) / (spend / prior)) if prior and spend > 0 else 0.0
        row[col + 13] = prior == 0
        links: list[tuple[str, str]] = []
        for j, kind, value in (
            (col + 14, "card", card),
            (col + 15, "address", frame.address[i]),
            (col + 16, "device", frame.device[i]),
        ):
            if value is not None:
                links.append((kind, value))
                row[j] = prior > 0 and (cid, kind, value) not in snap.links
        _rhythm(row, col + 17, snap, frame, i, t, cust)
        novel_events = snap.events.get((NOVEL, cid), [])
        row[col + 25] = _window(novel_events, t, WINDOW_LONG_S)[0]
        row[col + 26] = _log_gap(novel_events, t)
        if row[col + 24] > 0:
            entities += ((NOVEL, cid),)
        fact = OrderFacts(
            order_id=oid,
            customer_id=cid,
            ts=t,
            total=total,
            features=row.copy(),
            entities=entities,
            links=tuple(links),
        )
        apply_to_snapshot(snap, fact)
        facts.append(fact)
    return out, facts


def _rhythm(
    row: np.ndarray,
    col: int,
    snap: StateSnapshot,
    frame: OrderFrame,
    i: int,
    t: float,
    cust: list[EntityEvent],
) -> None:
    """The schema-2 columns: velocity and gaps per card and device, counts in minutes and hours
    rather than a burst's particular spacing, and how many of the order's links are new."""

    def events(kind: str, value: str | None) -> list[EntityEvent]:
        return [] if value is None else snap.events.get((kind, value), [])

    card_events = events("card", frame.card[i])
    device_events = events("device", frame.device[i])
    address_events = events("address", frame.address[i])
    row[col] = _window(card_events, t, WINDOW_HOUR_S)[0]
    row[col + 1] = _log_gap(card_events, t)
    row[col + 2] = _window(device_events, t, WINDOW_HOUR_S)[0]
    row[col + 3] = _window(device_events, t, WINDOW_LONG_S)[0]
    row[col + 4] = _log_gap(device_events, t)
    row[col + 5] = _window(address_events, t, WINDOW_LONG_S)[0]
    row[col + 6] = _log_gap(cust, t)
    row[col + 7] = row[col - 3] + row[col - 2] + row[col - 1]


def apply_pending(snap: StateSnapshot, entry: LedgerEntry) -> None:
    """``entry`` into the state, as ``stateful_features`` would have applied it had it computed
    that order: the same novelty rule (a link new to a customer with earlier orders)."""
    event = EntityEvent(entry.order_id, entry.ts, entry.total, entry.customer_id)
    keys = list(entry.entities)
    if entry.links is not None:
        cid = entry.customer_id
        prior, spend = snap.customers.get(cid, (0, 0.0))
        if prior > 0 and any((cid, kind, value) not in snap.links for kind, value in entry.links):
            keys.append((NOVEL, cid))
        snap.customers[cid] = (prior + 1, spend + entry.total)
        for kind, value in entry.links:
            snap.links.add((cid, kind, value))
    for key in keys:
        snap.events.setdefault(key, []).append(event)


def apply_to_snapshot(snap: StateSnapshot, fact: OrderFacts) -> None:
    snap.seen[fact.order_id] = fact.features
    event = EntityEvent(fact.order_id, fact.ts, fact.total, fact.customer_id)
    for key in fact.entities:
        snap.events.setdefault(key, []).append(event)
    prior, spend = snap.customers.get(fact.customer_id, (0, 0.0))
    snap.customers[fact.customer_id] = (prior + 1, spend + fact.total)
    for kind, value in fact.links:
        snap.links.add((fact.customer_id, kind, value))


__all__ = [
    "BASKET_FEATURES",
    "FEATURE_NAMES",
    "FEATURE_SCHEMA_VERSION",
    "FRAUD_FEATURES",
    "FRAUD_FEATURE_GROUPS",
    "N_FEATURES",
    "STATEFUL_FEATURES",
    "EntityEvent",
    "LedgerEntry",
    "OrderFacts",
    "OrderFrame",
    "StateQuery",
    "StateSnapshot",
    "address_key",
    "apply_pending",
    "basket_features",
    "order_entities",
    "state_query",
    "stateful_features",
]
