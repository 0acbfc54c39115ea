"""The ``aioetl`` command line (typer): cluster and objects (main), ETLs (etl), jobs (jobs)."""
