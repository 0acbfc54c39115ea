"""Process entry point of one node: ``python -m aioetl.engine.node.main gateway|target ...``.

The launcher (:mod:`aioetl.engine.node.launcher`) starts these; flags are read here, once,
and turned into config objects.

Every node needs the cluster secret (:mod:`aioetl.engine.node.auth`): ``--secret-file PATH``
(what the launcher passes: ``<data>/cluster.secret``) or the
``AIOETL_CLUSTER_SECRET`` environment variable (for nodes on other machines).
The variable is removed from this process's environment once read, so nothing the
node starts inherits it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import structlog

from aioetl.engine.node.auth import ENV_SECRET, read_secret
from aioetl.engine.node.httpd import install_uvloop


def configure_logging(level: str = "info") -> None:
    """Structured logs, one JSON-ish line per event, to stderr."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m aioetl.engine.node.main")
    sub = p.add_subparsers(dest="role", required=True)
    g = sub.add_parser("gateway")
    g.add_argument("--id", required=True)
    g.add_argument("--data", required=True)
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=int, default=0)
    t = sub.add_parser("target")
    t.add_argument("--id", required=True)
    t.add_argument("--data", required=True)
    t.add_argument("--gateway", required=True)
    t.add_argument("--mountpath", action="append", required=True)
    t.add_argument("--host", default="127.0.0.1")
    t.add_argument("--port", type=int, default=0)
    for sp in (g, t):
        sp.add_argument("--log-level", default=os.environ.get("AIOETL_LOG_LEVEL", "info"))
        sp.add_argument("--secret-file", default=None,
                        help=f"file holding the cluster secret (else ${ENV_SECRET})")
    args = p.parse_args(argv)
    try:
        secret = read_secret(args.secret_file, os.environ)
    except (OSError, ValueError) as e:
        p.error(str(e))
    os.environ.pop(ENV_SECRET, None)
    configure_logging(args.log_level)
    install_uvloop()
    run_dir = os.path.join(args.data, "run")
    if args.role == "gateway":
        from aioetl.engine.gateway.gateway import GatewayConfig, run_gateway

        asyncio.run(run_gateway(GatewayConfig(node_id=args.id, data_dir=args.data, cluster_secret=secret,
                                              host=args.host, port=args.port, run_dir=run_dir)))
    else:
        from aioetl.engine.target.target import TargetConfig, run_target

        asyncio.run(
            run_target(
                TargetConfig(
                    node_id=args.id,
                    mountpaths=args.mountpath,
                    gateway_url=args.gateway,
                    host=args.host,
                    port=args.port,
                    run_dir=run_dir,
                    data_dir=args.data,
                    cluster_secret=secret,
                )
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
