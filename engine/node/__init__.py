"""Node processes: entry points (``python -m aioetl.engine.node.main``), the HTTP
plumbing both node kinds use (httpd), the cluster credential (auth) and the
launcher of a cluster on this machine (``LocalCluster``)."""
