"""aioetl.engine: the nodes (gateway, targets), their storage, scheduler and clients.

Sub-packages, in the order an offline job's data flows through them:

- :mod:`.client`: the data client and the ``aioetl`` CLI;
- :mod:`.gateway`: the proxy (cluster map, BMD, etlMD, job fan-out);
- :mod:`.target`: a storage target (object store, object routes, ETLs, pod runtimes);
- :mod:`.scheduler`: offline jobs on a target (joggers, workers, delivery, receipts);
- :mod:`.node`: process entry points, HTTP plumbing, cluster auth, the local launcher;
- :mod:`.core`: sans-I/O pieces (names, cluster map and HRW, request bodies, ETL specs).
"""
