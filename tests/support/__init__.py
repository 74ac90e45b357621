"""What the tests share, in one place: helpers are imported from here, fixtures live in the
``conftest.py`` files. No test module imports another test module.

- ``orders``: events and API bodies to send.
- ``db``: which databases the ``db`` fixture runs on.
- ``net``: ports and a TCP proxy to take a broker away.
- ``shop``: the API key, waiting on a condition, a worker process.
- ``harnesses`` and ``runtime_cases``: the runtime's behaviour tests, on either transport.
"""
