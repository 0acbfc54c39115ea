"""ETL metadata: init messages, names, comm types, stages, timeouts (sans-I/O).

An ETL is defined by the JSON body of ``PUT /v1/etl`` (AIStore ``ext/etl/api.go``):

- runtime spec (``ETLSpecMsg``, SDK ``init``/``init_class``)::

      {"name", "communication": "hpush://", "init_timeout": "5m", "obj_timeout": "45s",
       "support_direct_put": bool, "runtime": {"image", "command": [...], "env": [{"name","value"}]}}

- pod spec (``InitSpecMsg``, SDK 1.26 ``init_spec``): ``"spec"`` is a base64
  Kubernetes Pod YAML; its first container gives image, command and env.

The stored message is returned verbatim by ``view()``. :class:`EtlSpec` is the
normalized form the pod runtimes use.

An ETL's stage (etlMD's ``stage``, a target's per-ETL ``stage``, the SDK's
``ETL_STAGE_*`` in ``aistore/sdk/etl/etl_const.py``) is an :class:`EtlStage`; it
changes only along :data:`TRANSITIONS`::

                    init                   ready
    (new) ---------------------> Initializing -----> Running
                                  ^   |  ^  join       |
                 init (start,     |   |  +-------------+
                 restart)         |   | fail, stop     | fail, stop
                                  |   v                v
                                  Aborted <------------+      (stop: Aborted -> Aborted)

:func:`next_stage` (by event) and :func:`check_transition` (by target stage) are
the one place a move is judged; both raise :class:`IllegalStageTransition`.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml

from aioetl.errors import BadRequest, Conflict, InvalidName
from aioetl.xactions.duration import parse_duration_s

__all__ = [
    "COMM_TYPES",
    "STAGE_ABORTED",
    "STAGE_INITIALIZING",
    "STAGE_RUNNING",
    "TRANSITIONS",
    "EtlEvent",
    "EtlSpec",
    "EtlStage",
    "IllegalStageTransition",
    "check_transition",
    "etl_not_found",
    "load_spec_yaml",
    "next_stage",
    "parse_duration_s",
    "parse_init_msg",
    "validate_etl_name",
]

HPUSH, HPULL, WS = "hpush://", "hpull://", "ws://"
COMM_TYPES = (HPUSH, HPULL, WS)



class EtlStage(enum.StrEnum):
    """The stage of an ETL, as AIStore's API and the SDK spell it on the wire.

    A ``str`` enum: members compare equal to, hash like, and JSON-encode as the
    plain strings (``EtlStage.RUNNING == "Running"``), so etlMD files and replies
    keep their format and a stage read back from JSON compares with a member.
    """

    INITIALIZING = "Initializing"
    """Pods are being started on some target (new, started, or a target (re)joined)."""
    RUNNING = "Running"
    """Every target has a ready pod; inline and offline transforms are served."""
    ABORTED = "Aborted"
    """Stopped by the user, or a pod failed; ``start`` initializes it again."""


class EtlEvent(enum.StrEnum):
    """What happened to an ETL; with its stage, it decides the next stage."""

    INIT = "init"
    """Start pods on every target: a new ETL, ``start``, or a restart after boot."""
    READY = "ready"
    """Every pod being started is ready."""
    JOIN = "join"
    """A target (re)joined the cluster and its pod is being started."""
    FAIL = "fail"
    """An init failed or was interrupted, a pod died, or the node restarted under it."""
    STOP = "stop"
    """The user stopped or deleted it (idempotent)."""


# Old names, kept so existing callers keep working: they *are* the enum members
# (``STAGE_RUNNING is EtlStage.RUNNING``). New code should use EtlStage directly.
STAGE_INITIALIZING = EtlStage.INITIALIZING
STAGE_RUNNING = EtlStage.RUNNING
STAGE_ABORTED = EtlStage.ABORTED

_I, _R, _A = EtlStage.INITIALIZING, EtlStage.RUNNING, EtlStage.ABORTED
TRANSITIONS: Mapping[tuple[EtlStage | None, EtlEvent], EtlStage] = MappingProxyType({
    (None, EtlEvent.INIT): _I,
    (_I, EtlEvent.INIT): _I,  # a new ETL's first init (etlMD holds it Initializing already)
    (_A, EtlEvent.INIT): _I,
    (_I, EtlEvent.READY): _R,
    (_I, EtlEvent.JOIN): _I,
    (_R, EtlEvent.JOIN): _I,
    (_I, EtlEvent.FAIL): _A,
    (_R, EtlEvent.FAIL): _A,
    (_I, EtlEvent.STOP): _A,
    (_R, EtlEvent.STOP): _A,
    (_A, EtlEvent.STOP): _A,
})
"""Every legal move: ``(stage or None for an ETL not yet in etlMD, event) -> next stage``."""
del _I, _R, _A

_LEGAL_PAIRS = frozenset((frm, to) for (frm, _ev), to in TRANSITIONS.items())


class IllegalStageTransition(Conflict):
    """A stage change :data:`TRANSITIONS` does not allow (409: the ETL's current stage
    forbids it, e.g. starting a Running ETL)."""


def _stage(value: EtlStage | str) -> EtlStage:
    try:
        return EtlStage(value)
    except ValueError:
        raise IllegalStageTransition(f"unknown ETL stage {str(value)[:64]!r}") from None


def next_stage(current: EtlStage | str | None, event: EtlEvent | str) -> EtlStage:
    """The stage an ETL in ``current`` moves to on ``event`` (pure).

    Args:
        current: the stage now; a plain wire string is accepted; ``None`` for an
            ETL that etlMD does not hold yet.
        event: what happened (an :class:`EtlEvent` or its value).

    Returns:
        the next stage.

    Raises:
        IllegalStageTransition: the move is not in :data:`TRANSITIONS`, or
            ``current``/``event`` is not a known stage/event.
    """
    frm = None if current is None else _stage(current)
    try:
        ev = EtlEvent(event)
    except ValueError:
        raise IllegalStageTransition(f"unknown ETL event {str(event)[:64]!r}") from None
    to = TRANSITIONS.get((frm, ev))
    if to is None:
        raise IllegalStageTransition(f"ETL stage {frm.value if frm else '(new)'} does not allow {ev.value}")
    return to


def check_transition(current: EtlStage | str | None, to: EtlStage | str) -> EtlStage:
    """Check that some event moves an ETL from ``current`` to ``to`` (pure).

    For callers that assign stages directly: ``e["stage"] = check_transition(e["stage"], EtlStage.RUNNING)``.

    Returns:
        ``to`` as an :class:`EtlStage`.

    Raises:
        IllegalStageTransition: no event of :data:`TRANSITIONS` makes that move, or
            either stage is unknown.
    """
    frm, dst = None if current is None else _stage(current), _stage(to)
    if (frm, dst) not in _LEGAL_PAIRS:
        raise IllegalStageTransition(f"ETL stage {frm.value if frm else '(new)'} -> {dst.value} is not allowed")
    return dst


DEFAULT_INIT_TIMEOUT_S = 45.0  # Go default when omitted (ext/etl/api.go)
DEFAULT_OBJ_TIMEOUT_S = 10.0

_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def validate_etl_name(name: str) -> str:
    """6-32 characters of ``[a-z0-9-]``, starting and ending alphanumeric (k8s DNS label).

    Raises:
        InvalidName: otherwise.
    """
    if not isinstance(name, str) or not 6 <= len(name) <= 32 or not _NAME_RE.fullmatch(name):
        raise InvalidName(
            f'invalid etl job name "{name}": must be 6 to 32 characters of lowercase letters, '
            "digits and '-', starting and ending with a letter or digit"
        )
    return name


def etl_not_found(name: str) -> Exception:
    """404 whose text the SDK maps to ``ErrETLNotFound`` (it looks for "etl job")."""
    from aioetl.errors import NotFound

    return NotFound(f'etl job "{name}" does not exist')


@dataclass
class EtlSpec:
    """A validated, normalized ETL definition.

    Attributes:
        name: the ETL name.
        comm_type: one of ``hpush://``, ``hpull://``, ``ws://``.
        image: container image name (mapped to a local command by the runtime).
        command: the container command, possibly empty.
        env: user environment, in order (``ETL_CLASS_PAYLOAD`` etc. included).
        init_timeout_s, obj_timeout_s: seconds.
        direct_put: ``support_direct_put``.
        msg: the init message as received (returned by ``view()``).
    """

    name: str
    comm_type: str
    image: str
    command: list[str]
    env: list[tuple[str, str]]
    init_timeout_s: float
    obj_timeout_s: float
    direct_put: bool
    msg: dict[str, Any] = field(default_factory=dict)

    def env_value(self, key: str) -> str | None:
        for k, v in self.env:
            if k == key:
                return v
        return None


def _parse_env(raw: Any) -> list[tuple[str, str]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadRequest('invalid "env": expected a list of {"name", "value"}')
    out = []
    for e in raw:
        if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not e["name"]:
            raise BadRequest(f'invalid env entry {e!r}: expected {{"name": str, "value": str}}')
        out.append((e["name"], "" if e.get("value") is None else str(e.get("value"))))
    return out


MAX_SPEC_BYTES = 1 << 20
"""Largest Pod spec YAML (1 MiB of text; AIStore's specs are a few KB)."""
MAX_SPEC_NODES = 100_000
"""Most YAML nodes a spec may hold once its aliases are expanded."""
MAX_SPEC_EXPANDED_BYTES = 4 << 20
"""Most scalar text a spec may hold once its aliases are expanded (4 MiB)."""


def _expanded_size(root: yaml.Node) -> tuple[int, int]:
    """``(nodes, scalar bytes)`` of a composed YAML graph with every alias expanded.

    An alias is a second reference to an already composed node, so the graph is a
    DAG and its expansion can be exponential in its size (the "billion laughs").
    Each distinct node is sized once (memoized, iterative), so this costs
    O(distinct nodes) whatever the expansion is; a cycle (a recursive alias) counts
    as unbounded.
    """
    sizes: dict[int, tuple[int, int]] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for kv in node.value for n in kv]
        if done:
            on_path.discard(key)
            n, b = 1, len(node.value) if isinstance(node, yaml.ScalarNode) else 0
            for c in children:
                cn, cb = sizes[id(c)]
                n, b = n + cn, b + cb
            sizes[key] = (min(n, 1 << 62), min(b, 1 << 62))
            continue
        if key in on_path:
            return 1 << 62, 1 << 62
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def load_spec_yaml(text: str) -> Any:
    """Parse an ETL's Pod spec YAML safely and within bounds.

    Safe tags only (``yaml.SafeLoader``); at most :data:`MAX_SPEC_BYTES` of text;
    aliases are allowed but the document they expand to is bounded by
    :data:`MAX_SPEC_NODES` and :data:`MAX_SPEC_EXPANDED_BYTES`, checked on the
    composed node graph before any Python object is built, so an alias bomb of a
    few hundred bytes is refused in milliseconds and allocates nothing big.

    Raises:
        BadRequest: too large, malformed, nested too deeply, or expanding too far.
    """
    if len(text) > MAX_SPEC_BYTES:
        raise BadRequest(f'invalid "spec": larger than {MAX_SPEC_BYTES} bytes')
    try:
        loader = yaml.SafeLoader(text)  # checks the characters: a ReaderError here
    except yaml.YAMLError as e:
        raise BadRequest(f'invalid "spec": malformed YAML: {e}') from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        n, b = _expanded_size(node)
        if n > MAX_SPEC_NODES or b > MAX_SPEC_EXPANDED_BYTES:
            raise BadRequest(
                f'invalid "spec": its aliases expand past {MAX_SPEC_NODES} nodes or {MAX_SPEC_EXPANDED_BYTES} bytes'
            )
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise BadRequest(f'invalid "spec": malformed YAML: {e}') from None
    except RecursionError:
        raise BadRequest('invalid "spec": YAML nested too deeply') from None
    finally:
        loader.dispose()


def _from_pod_spec(spec_b64: Any) -> tuple[str, list[str], list[tuple[str, str]], str]:
    """``(image, command, env, comm annotation)`` from a base64 Pod YAML."""
    if not isinstance(spec_b64, str) or not spec_b64:
        raise BadRequest('invalid "spec": expected base64 of a Kubernetes Pod YAML')
    if len(spec_b64) > (MAX_SPEC_BYTES + 2) // 3 * 4:
        raise BadRequest(f'invalid "spec": larger than {MAX_SPEC_BYTES} bytes')
    try:
        text = base64.b64decode(spec_b64, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise BadRequest('invalid "spec": not base64 of UTF-8 text') from None
    doc = load_spec_yaml(text)
    if not isinstance(doc, dict) or doc.get("kind", "Pod") != "Pod":
        raise BadRequest('invalid "spec": expected a Kubernetes Pod')
    try:
        c = doc["spec"]["containers"][0]
    except (KeyError, IndexError, TypeError):
        raise BadRequest('invalid "spec": no spec.containers[0]') from None
    if not isinstance(c, dict) or not isinstance(c.get("image"), str):
        raise BadRequest('invalid "spec": containers[0].image is missing')
    cmd = c.get("command") or []
    if not isinstance(cmd, list):
        raise BadRequest('invalid "spec": containers[0].command must be a list')
    args = c.get("args") or []
    env = _parse_env(c.get("env"))
    ann = ((doc.get("metadata") or {}).get("annotations") or {}).get("communication_type", "")
    return c["image"], [str(x) for x in cmd] + [str(x) for x in args], env, str(ann)


def parse_init_msg(msg: Any) -> EtlSpec:
    """Validate a ``PUT /v1/etl`` body.

    Raises:
        BadRequest: not an object, unknown comm type, no runtime/spec, bad env or
            durations, ws without direct put (AIStore refuses it too).
        InvalidName: a bad ETL name.
    """
    if not isinstance(msg, dict):
        raise BadRequest("invalid etl init message: expected a JSON object")
    name = validate_etl_name(msg.get("name", ""))
    comm = msg.get("communication") or HPUSH
    if comm not in COMM_TYPES:
        raise BadRequest(
            f'etl job "{name}": unknown communication type "{comm}" (expected one of {", ".join(COMM_TYPES)})'
        )
    direct_put = bool(msg.get("support_direct_put", False))
    if msg.get("spec"):
        image, command, env, ann = _from_pod_spec(msg["spec"])
        if not msg.get("communication") and ann in COMM_TYPES:
            comm = ann
    elif isinstance(msg.get("runtime"), dict):
        rt = msg["runtime"]
        image = rt.get("image")
        if not isinstance(image, str) or not image:
            raise BadRequest(f'etl job "{name}": runtime.image is required')
        command = rt.get("command") or []
        if isinstance(command, str):
            command = command.split()
        if not isinstance(command, list) or not all(isinstance(x, str) for x in command):
            raise BadRequest(f'etl job "{name}": runtime.command must be a list of strings')
        env = _parse_env(rt.get("env"))
    else:
        raise BadRequest(
            f'etl job "{name}": the init message needs "runtime" (image, command, env) or "spec" (pod YAML)'
        )
    if comm == WS and not direct_put:
        raise BadRequest(f'etl job "{name}": WebSocket without direct put is not supported (set support_direct_put)')
    return EtlSpec(
        name=name,
        comm_type=comm,
        image=image,
        command=list(command),
        env=env,
        init_timeout_s=parse_duration_s(msg.get("init_timeout"), DEFAULT_INIT_TIMEOUT_S),
        obj_timeout_s=parse_duration_s(msg.get("obj_timeout"), DEFAULT_OBJ_TIMEOUT_S),
        direct_put=direct_put,
        msg=msg,
    )
