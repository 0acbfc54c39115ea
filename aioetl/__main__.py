"""``python -m aioetl``: the ``aioetl`` command line."""

from aioetl.engine.client.cli.main import main

main()
