"""Names on the target <-> pod wire: headers, query parameters, ws control fields,
environment variables, and the pod-side defaults.

Values follow AIStore (``api/apc/headers.go``, ``api/apc/query.go``,
``ext/etl/api.go``) and ``aistore[etl]`` 2.0.0 (``aistore/sdk/const.py``), see
``reference/ais-etl-protocol.md`` §1.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_DIRECT_PUT_RETRIES",
    "ENV_AUTHN_TOKEN",
    "ENV_BUILTIN",
    "ENV_CLASS_PAYLOAD",
    "ENV_DIRECT_FQN",
    "ENV_DIRECT_PUT_BACKOFF_S",
    "ENV_DIRECT_PUT_RETRIES",
    "ENV_NUM_WORKERS",
    "ENV_OS_PACKAGES",
    "ENV_PACKAGES",
    "ENV_SEED_DEFAULT",
    "ENV_TARGET_URL",
    "EXIT_BAD_CLASS",
    "EXIT_MISSING_OS_PACKAGES",
    "HEADER_AUTHORIZATION",
    "HEADER_DIRECT_PUT_LENGTH",
    "HEADER_ETL_RETRY_REASON",
    "HEADER_NODE_URL",
    "HEADER_REQ_ID",
    "HEADER_WORKER",
    "HEADER_WS_IDS",
    "HEALTH_BODY",
    "HEALTH_PATH",
    "MAX_WS_MSG_BYTES",
    "QPARAM_ETL_ARGS",
    "QPARAM_ETL_FQN",
    "QPARAM_LATEST_VER",
    "RETRY_BACKOFF_FIRST_S",
    "RETRY_BACKOFF_MAX_S",
    "RETRY_REASON_DIRECT_PUT_TRANSIENT",
    "WS_ETL_ARGS",
    "WS_FQN",
    "WS_ID",
    "WS_PATH",
    "WS_PIPELINE",
    "WS_REPLIES_PER_SEND",
    "WS_ROUTE",
]

# -- HTTP headers (api/apc/headers.go) -----------------------------------------
HEADER_NODE_URL = "Ais-Node-Url"  # comma-separated pipeline and direct-put destinations
HEADER_DIRECT_PUT_LENGTH = "Ais-Direct-Put-Length"  # bytes delivered by direct put
HEADER_ETL_RETRY_REASON = "Ais-Etl-Retry-Reason"  # with 503: the target may retry
RETRY_REASON_DIRECT_PUT_TRANSIENT = "direct-put-transient"
HEADER_AUTHORIZATION = "Authorization"
# aioetl extension, on the ws handshake reply of our pods: "<index>/<count>" of the
# NUM_WORKERS process that accepted the connection, so the target can spread its ws
# connections evenly (SO_REUSEPORT hashes connections to processes at random)
HEADER_WORKER = "Aioetl-Worker"
# aioetl extension, on the ws handshake reply of our pods: "1" = this pod echoes request ids
# in framed replies (aioetl.communicators.wire.frames), so the target attributes replies by id
HEADER_WS_IDS = "Aioetl-Ws-Ids"
# aioetl extension: the target numbers its hpush/hpull requests; our pods echo the number in
# the reply, so a reply left over on a keep-alive connection is never taken for another's
HEADER_REQ_ID = "Aioetl-Req-Id"
# our pods send the replies to ws requests that arrived together in one write, at most this
# many per write (aioetl.communicators.cork): the target handles them in one wakeup. Thumbnail job,
# 1,000 PNGs, 4 rounds interleaved: the target's CPU went from 0.285 to 0.215 ms per object.
WS_REPLIES_PER_SEND = 4

# -- query parameters (api/apc/query.go) ---------------------------------------
QPARAM_ETL_ARGS = "etl_args"
QPARAM_ETL_FQN = "etl_fqn"  # url.PathEscape(FQN), then query-encoded again
QPARAM_LATEST_VER = "latest-ver"  # hpull only; ignored by pods

# -- WebSocket control message fields (ext/etl/api.go WebsocketCtrlMsg) --------
WS_PIPELINE = "pipeline"
WS_ETL_ARGS = "etl_args"
WS_FQN = "fqn"
WS_PATH = "path"
WS_ID = "id"  # aioetl extension: request id, echoed in the framed reply (aioetl.communicators.wire.frames)

# -- routes --------------------------------------------------------------------
HEALTH_PATH = "/health"
HEALTH_BODY = b"Running"
WS_ROUTE = "/ws"
MAX_WS_MSG_BYTES = 16 << 30  # 16 GiB, the target's read limit (websocket_comm.go)

# -- environment (ext/etl/boot.go; aistore[etl] base_etl_server.py; runtime bootstrap)
ENV_TARGET_URL = "AIS_TARGET_URL"  # <target>/v1/etl/_object/<etl>/<secret>; required
ENV_DIRECT_FQN = "ETL_DIRECT_FQN"  # "true": buffered transform() gets the FQN as str
ENV_DIRECT_PUT_RETRIES = "AIS_DIRECT_PUT_RETRIES"
ENV_AUTHN_TOKEN = "AIS_AUTHN_TOKEN"
ENV_CLASS_PAYLOAD = "ETL_CLASS_PAYLOAD"  # base64(cloudpickle(class))
ENV_PACKAGES = "PACKAGES"
ENV_OS_PACKAGES = "OS_PACKAGES"
ENV_NUM_WORKERS = "NUM_WORKERS"
ENV_SEED_DEFAULT = "SEED_DEFAULT"  # hash_with_args built-in
# aioetl extensions
ENV_DIRECT_PUT_BACKOFF_S = "AIOETL_DIRECT_PUT_BACKOFF_S"  # first retry delay (tests)
ENV_BUILTIN = "AIOETL_BUILTIN"  # set by the bootstrap for --builtin NAME

# -- defaults ------------------------------------------------------------------
DEFAULT_DIRECT_PUT_RETRIES = 3
RETRY_BACKOFF_FIRST_S = 1.0  # delay before retry k (0-based) = min(first * 2**k, max): 1, 2, 4 s
RETRY_BACKOFF_MAX_S = 30.0

# -- bootstrap exit codes ------------------------------------------------------
EXIT_BAD_CLASS = 2  # no/invalid ETL_CLASS_PAYLOAD, not an ETLServer, bad env
EXIT_MISSING_OS_PACKAGES = 3  # engine/pods.py relies on this value
