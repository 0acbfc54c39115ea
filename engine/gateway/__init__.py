"""The gateway (AIStore proxy): cluster map, BMD and etlMD, redirects to HRW owners,
ETL init fan-out (etl) and job fan-out and status (jobs).

Modules, in dependency order (each imports only those before it):

- ``tasks``: :class:`TaskOwner`, the owner of every background task;
- ``cluster``: :class:`ClusterMap` (smap) and :class:`PeerClient` (calls to targets);
- ``metadata``: :class:`ClusterMeta` (BMD, joins, metasync) and :class:`EtlMd`;
- ``etl``: :class:`GatewayEtl`; ``jobs``: :class:`GatewayJobs` (neither imports the other);
- ``gateway``: the entry point (:func:`run_gateway`), which builds all of the above.
"""
