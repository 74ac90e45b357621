"""What the bench suite (``bench/suite.py``) runs in processes of their own.

The passthroughs (``*_pass.py``) do the same work over the same preloaded topic: consume
order-like JSON records, decode them, filter, encode, produce to a sink, exactly-once where the
client offers it. Each prints one JSON line, ``{"per_s": ..., "count": ...}``, timed from its
first record to its last one's commit, so group joins and interpreter start-up are not counted.
``quix_pass.py`` and ``faust_pass.py`` run in their own virtualenvs and import nothing from
this project. ``http_load.py`` is the order API's load generator and the end-to-end probe.
"""
