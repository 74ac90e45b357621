"""Build ``pizzashop/core/menu.json`` from the pizzaplace prices and the recipes written here.

Pizzas and their prices by size come from ``pizzaplace.csv.gz`` (each pizza and size has one
price all year). The ingredient lists, the sides, drinks and desserts are ours: pizzaplace
sells only pizzas, and upsell needs something else to suggest. Re-run after editing::

    python -m models.data.build_menu
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent
MENU_PATH = HERE.parent.parent / "pizzashop" / "core" / "menu.json"

# name, ingredients; keyed by pizzaplace's pizza name.
PIZZAS: dict[str, tuple[str, list[str]]] = {
    "bbq_ckn": (
        "The Barbecue Chicken Pizza",
        [
            "barbecued chicken",
            "red peppers",
            "green peppers",
            "tomatoes",
            "red onions",
            "barbecue sauce",
        ],
    ),
    "big_meat": (
        "The Big Meat Pizza",
        ["bacon", "pepperoni", "italian sausage", "chorizo sausage"],
    ),
    "brie_carre": (
        "The Brie Carre Pizza",
        ["brie carre cheese", "prosciutto", "caramelized onions", "pears", "thyme", "garlic"],
    ),
    "calabrese": (
        "The Calabrese Pizza",
        ["nduja salami", "pancetta", "tomatoes", "red onions", "friggitello peppers", "garlic"],
    ),
    "cali_ckn": (
        "The California Chicken Pizza",
        [
            "chicken",
            "artichoke",
            "spinach",
            "garlic",
            "jalapeno peppers",
            "fontina cheese",
            "gouda cheese",
        ],
    ),
    "ckn_alfredo": (
        "The Chicken Alfredo Pizza",
        ["chicken", "red onions", "red peppers", "mushrooms", "asiago cheese", "alfredo sauce"],
    ),
    "ckn_pesto": (
        "The Chicken Pesto Pizza",
        ["chicken", "tomatoes", "red peppers", "spinach", "garlic", "pesto sauce"],
    ),
    "classic_dlx": (
        "The Classic Deluxe Pizza",
        ["pepperoni", "mushrooms", "red onions", "red peppers", "bacon"],
    ),
    "five_cheese": (
        "The Five Cheese Pizza",
        [
            "mozzarella cheese",
            "provolone cheese",
            "smoked gouda cheese",
            "romano cheese",
            "blue cheese",
            "garlic",
        ],
    ),
    "four_cheese": (
        "The Four Cheese Pizza",
        [
            "ricotta cheese",
            "gorgonzola piccante cheese",
            "mozzarella cheese",
            "parmigiano reggiano cheese",
            "garlic",
        ],
    ),
    "green_garden": (
        "The Green Garden Pizza",
        ["spinach", "mushrooms", "tomatoes", "green olives", "feta cheese"],
    ),
    "hawaiian": ("The Hawaiian Pizza", ["sliced ham", "pineapple", "mozzarella cheese"]),
    "ital_cpcllo": (
        "The Italian Capocollo Pizza",
        ["capocollo", "red peppers", "tomatoes", "goat cheese", "garlic", "oregano"],
    ),
    "ital_supr": (
        "The Italian Supreme Pizza",
        ["calabrese salami", "capocollo", "tomatoes", "red onions", "green olives", "garlic"],
    ),
    "ital_veggie": (
        "The Italian Vegetables Pizza",
        ["eggplant", "artichokes", "tomatoes", "zucchini", "red peppers", "garlic", "pesto sauce"],
    ),
    "mediterraneo": (
        "The Mediterranean Pizza",
        [
            "spinach",
            "artichokes",
            "kalamata olives",
            "sun-dried tomatoes",
            "feta cheese",
            "plum tomatoes",
            "red onions",
        ],
    ),
    "mexicana": (
        "The Mexicana Pizza",
        [
            "tomatoes",
            "red peppers",
            "jalapeno peppers",
            "red onions",
            "cilantro",
            "corn",
            "chipotle sauce",
            "garlic",
        ],
    ),
    "napolitana": (
        "The Napolitana Pizza",
        ["tomatoes", "anchovies", "green olives", "red onions", "garlic"],
    ),
    "pep_msh_pep": (
        "The Pepperoni, Mushroom, and Peppers Pizza",
        ["pepperoni", "mushrooms", "green peppers"],
    ),
    "pepperoni": ("The Pepperoni Pizza", ["mozzarella cheese", "pepperoni"]),
    "peppr_salami": (
        "The Pepper Salami Pizza",
        ["genoa salami", "capocollo", "pepperoni", "tomatoes", "asiago cheese", "garlic"],
    ),
    "prsc_argla": (
        "The Prosciutto and Arugula Pizza",
        ["prosciutto di san daniele", "arugula", "mozzarella cheese"],
    ),
    "sicilian": (
        "The Sicilian Pizza",
        [
            "coarse sicilian salami",
            "tomatoes",
            "green olives",
            "luganega sausage",
            "onions",
            "garlic",
        ],
    ),
    "soppressata": (
        "The Soppressata Pizza",
        ["soppressata salami", "fontina cheese", "mozzarella cheese", "mushrooms", "garlic"],
    ),
    "southw_ckn": (
        "The Southwest Chicken Pizza",
        [
            "chicken",
            "tomatoes",
            "red peppers",
            "red onions",
            "jalapeno peppers",
            "corn",
            "cilantro",
            "chipotle sauce",
        ],
    ),
    "spicy_ital": (
        "The Spicy Italian Pizza",
        ["capocollo", "tomatoes", "goat cheese", "artichokes", "peperoncini verdi", "garlic"],
    ),
    "spin_pesto": (
        "The Spinach Pesto Pizza",
        ["spinach", "artichokes", "tomatoes", "sun-dried tomatoes", "garlic", "pesto sauce"],
    ),
    "spinach_fet": (
        "The Spinach and Feta Pizza",
        ["spinach", "mushrooms", "red onions", "feta cheese", "garlic"],
    ),
    "spinach_supr": (
        "The Spinach Supreme Pizza",
        [
            "spinach",
            "red onions",
            "pepperoni",
            "tomatoes",
            "artichokes",
            "kalamata olives",
            "garlic",
            "asiago cheese",
        ],
    ),
    "thai_ckn": (
        "The Thai Chicken Pizza",
        ["chicken", "pineapple", "tomatoes", "red peppers", "thai sweet chilli sauce"],
    ),
    "the_greek": (
        "The Greek Pizza",
        ["kalamata olives", "feta cheese", "tomatoes", "garlic", "beef chuck roast", "red onions"],
    ),
    "veggie_veg": (
        "The Vegetables + Vegetables Pizza",
        [
            "mushrooms",
            "tomatoes",
            "red peppers",
            "green peppers",
            "red onions",
            "zucchini",
            "spinach",
            "garlic",
        ],
    ),
}

# sku, name, category, price, description (ours: pizzaplace has no such items).
EXTRAS: list[tuple[str, str, str, str, str]] = [
    (
        "garlic_bread",
        "Garlic Bread",
        "side",
        "5.50",
        "oven-baked bread with garlic butter, parsley and a little parmesan",
    ),
    (
        "mozz_sticks",
        "Mozzarella Sticks",
        "side",
        "6.75",
        "breaded mozzarella fried golden, with marinara dip; cheesy and rich",
    ),
    (
        "wings_bbq",
        "Barbecue Chicken Wings",
        "side",
        "8.95",
        "six chicken wings glazed in smoky barbecue sauce",
    ),
    (
        "wings_hot",
        "Hot Chicken Wings",
        "side",
        "8.95",
        "six chicken wings in a spicy chilli and jalapeno sauce, with blue cheese dip",
    ),
    (
        "caesar_salad",
        "Caesar Salad",
        "side",
        "7.25",
        "romaine, croutons, parmesan and creamy caesar dressing",
    ),
    (
        "greek_salad",
        "Greek Salad",
        "side",
        "7.25",
        "tomatoes, cucumber, kalamata olives, feta cheese and red onions; fresh and vegetarian",
    ),
    ("fries", "Rosemary Fries", "side", "4.50", "crispy potato fries with rosemary and sea salt"),
    ("cola", "Cola", "drink", "2.50", "classic cola, ice cold, sweet and fizzy"),
    (
        "lemonade",
        "Sparkling Lemonade",
        "drink",
        "3.00",
        "lemonade with real lemons, refreshing and tart",
    ),
    ("water", "Sparkling Water", "drink", "2.00", "italian sparkling mineral water"),
    ("iced_tea", "Peach Iced Tea", "drink", "3.00", "black tea with peach, served cold"),
    (
        "beer",
        "Craft Lager",
        "drink",
        "5.50",
        "crisp pilsner-style lager from a local brewery, goes with spicy and meaty pizzas",
    ),
    (
        "red_wine",
        "House Red Wine",
        "drink",
        "7.50",
        "a glass of chianti, dry and fruity, for cheese and salami pizzas",
    ),
    (
        "tiramisu",
        "Tiramisu",
        "dessert",
        "6.50",
        "espresso-soaked ladyfingers, mascarpone and cocoa",
    ),
    (
        "cannoli",
        "Cannoli",
        "dessert",
        "5.75",
        "crisp sicilian pastry tubes filled with sweet ricotta and chocolate chips",
    ),
    ("brownie", "Chocolate Brownie", "dessert", "4.95", "warm fudgy chocolate brownie"),
    ("gelato", "Pistachio Gelato", "dessert", "4.50", "two scoops of creamy pistachio gelato"),
]

SIZE_ORDER = ["S", "M", "L", "XL", "XXL"]


def build() -> dict[str, object]:
    orders = pd.read_csv(HERE / "pizzaplace.csv.gz")
    prices = orders.groupby(["name", "size", "type"], as_index=False)["price"].max()
    items: list[dict[str, object]] = []
    for row in prices.sort_values(["name", "size"], key=_size_key).itertuples(index=False):
        title, ingredients = PIZZAS[row.name]
        items.append(
            {
                "sku": f"{row.name}_{row.size.lower()}",
                "product": row.name,
                "name": title,
                "category": "pizza",
                "style": row.type,
                "size": row.size,
                "price": f"{row.price:.2f}",
                "ingredients": ingredients,
                "description": f"{title} ({row.type}): " + ", ".join(ingredients),
            }
        )
    for sku, name, category, price, description in EXTRAS:
        items.append(
            {
                "sku": sku,
                "product": sku,
                "name": name,
                "category": category,
                "style": category,
                "size": "one",
                "price": price,
                "ingredients": [],
                "description": f"{name}: {description}",
            }
        )
    return {
        "currency": "USD",
        "source": "pizzas and prices: gt::pizzaplace (MIT, via models/data/pizzaplace.csv.gz); "
        "recipes and extras written for Pizzashop",
        "items": items,
    }


def _size_key(column: pd.Series) -> pd.Series:
    if column.name == "size":
        return column.map(SIZE_ORDER.index)
    return column


def main() -> None:
    MENU_PATH.write_text(json.dumps(build(), indent=1) + "\n")


if __name__ == "__main__":
    main()
