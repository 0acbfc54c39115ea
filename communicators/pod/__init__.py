"""The pod side: the ETL server base (server), its aiohttp and FastAPI shells,
the built-in transformers (builtins) and the pod entry point (bootstrap)."""
