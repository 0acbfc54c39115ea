"""Clients: the async data client (data) and the ``aioetl`` command line (cli)."""
