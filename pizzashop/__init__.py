"""Pizzashop's own two layers around the architecture's packages.

``pizzashop.core`` is the floor every package stands on: errors, settings, the database and its
migrations, the resource lifecycle, the menu. ``pizzashop.app`` is the roof: the composition
root, the command line, the demo. The layers between (``ingest``, ``services``, ``models``,
``enrichers``, ``api``) are written down in ``pyproject.toml`` and checked by ``lint-imports``.
"""
