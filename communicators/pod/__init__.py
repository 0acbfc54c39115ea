"""The pod side: the ETL server base (server) and the pieces it is made of
(config, interface, errors, offload, bridge, direct_put, ws_pipeline), its aiohttp
shell (aiohttp_shell, prefork; the class in aiohttp_server) and FastAPI flavour
(fastapi_server), the built-in transformers (builtins) and the pod entry point
(bootstrap)."""
