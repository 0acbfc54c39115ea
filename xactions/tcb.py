"""Control messages of the offline transform jobs (sans-I/O).

- ``etl-bck`` (``apc.TCBMsg``, bucket to bucket): ``id`` (ETL), ``pipeline``,
  ``prefix``, ``prepend``, ``ext``, ``dry_run``, ``force``, ``num-workers``,
  ``coer``, ``latest-ver``, ``synchronize``, ``request_timeout``, and aioetl's
  ``etl_args``.
- ``etl-listrange`` (``cmn.TCOMsg``): the same plus ``tobck`` and a selection,
  ``objnames`` (a list) or ``template`` (brace ranges like ``obj-{0..99}.txt``).

:meth:`TcbMsg.to_name` maps a source name to its destination name exactly as
AIStore's ``TCBMsg.ToName`` does: replace the last extension per ``ext``, then
prepend ``prepend``.

The flags, for ``ais://`` buckets (the only kind aioetl holds), as AIStore
reads them (NVIDIA/aistore@583e7729):

- ``latest-ver``: "for remote sources, revalidate each object's latest version"
  (``api/apc/tcbtco.go`` CopyBckMsg). For an ``ais://`` source
  ``LOM.CheckRemoteMD`` returns "equal" at once (``core/ldp.go``: "nothing to do
  with: in-cluster ais:// bucket"). Accepted and ignored, as AIStore does.
- ``force``: run "even when other xactions with limited coexistence are already
  running" (``ais/tgttxn.go`` tcb: ``xreg.LimitedCoexistence``). aioetl runs no
  xaction that limits coexistence (no rebalance, resilver, or bucket rename),
  so there is nothing to override: accepted, and the job starts either way.
- ``synchronize``: on an ``ais://`` source AIStore prunes the destination,
  deleting objects the source no longer has (``xact/xs/tcb.go`` ``prune``,
  ``xact/xs/prune.go``), except for an ``objnames`` list (``xact/xs/tcobjs.go``:
  ``msg.Sync && lrit.lrp != lrpList``), where it is ignored. aioetl prunes only
  behind a remote (``aws://``) source, whose full listing every target reads
  anyway; on an ``ais://`` source ``synchronize`` is refused with 400 (with
  ``prepend`` always, as AIStore does, ``ais/proxy.go``) except with an
  ``objnames`` list, where it is ignored.
- ``request_timeout``: "per-object transform request timeout" (``apc.Transform``,
  ``api/apc/tcbtco.go``; the CLI flag ``--object-timeout``: "server-side timeout
  of transforming a single object", ``cmd/cli/cli/const.go``). AIStore's server
  never reads it (the ETL's own ``obj_timeout`` applies). aioetl parses it (a Go
  duration string; invalid is 400) into :attr:`TcbMsg.request_timeout_s`, and
  :meth:`TcbMsg.obj_timeout_s` gives the per-object limit of the job: the
  smaller of it and the ETL's ``obj_timeout``. The SDK always sends ``"5m"``.
- ``etl_args``: not in AIStore's ``TCBMsg`` (nor sent by the SDK 2.0.0
  ``bucket.transform``); aioetl takes it as the per-job transform arguments,
  passed to every pod as inline GETs pass ``?etl_args=`` (``etl_args`` is also
  the field of AIStore's ws control message, ``ext/etl/api.go``
  ``WebsocketCtrlMsg.Targs``). A dict is JSON-encoded compactly, as the SDK's
  ``ETLConfig`` does for inline args.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aioetl.xactions.duration import go_duration, parse_duration_s
from aioetl.xactions.errs import InvalidMsg

__all__ = [
    "COPY_BCK",
    "COPY_KINDS",
    "COPY_LISTRANGE",
    "DELETE_LISTRANGE",
    "ETL_BCK",
    "ETL_LISTRANGE",
    "EVICT_LISTRANGE",
    "IN_PLACE_KINDS",
    "LISTRANGE_KINDS",
    "MAX_NUM_WORKERS",
    "PREFETCH_LISTRANGE",
    "TcbMsg",
    "expand_template",
]

ETL_BCK = "etl-bck"
ETL_LISTRANGE = "etl-listrange"
COPY_BCK = "copy-bck"
COPY_LISTRANGE = "copy-listrange"
DELETE_LISTRANGE = "delete-listrange"
EVICT_LISTRANGE = "evict-listrange"  # remote buckets: drop cached copies (AIStore xact/xs/evict.go)
PREFETCH_LISTRANGE = "prefetch-listrange"  # remote buckets: cold-GET into the cluster (xact/xs/prefetch.go)
LISTRANGE_KINDS = (ETL_LISTRANGE, COPY_LISTRANGE, DELETE_LISTRANGE, EVICT_LISTRANGE, PREFETCH_LISTRANGE)
COPY_KINDS = (COPY_BCK, COPY_LISTRANGE, DELETE_LISTRANGE, EVICT_LISTRANGE,
              PREFETCH_LISTRANGE)  # kinds without an ETL
IN_PLACE_KINDS = (DELETE_LISTRANGE, EVICT_LISTRANGE, PREFETCH_LISTRANGE)  # no destination bucket

_RANGE = re.compile(r"\{(\d+)\.\.(\d+)(?:\.\.(\d+))?\}")
MAX_TEMPLATE_NAMES = 10_000_000


def expand_template(template: str) -> Iterator[str]:
    """Expand brace ranges: ``a-{0..2}-{08..10..2}`` -> ``a-0-08, a-0-10, a-1-08, ...``.

    Zero padding follows the width of the start number when it has a leading zero.

    Raises:
        InvalidMsg: a malformed range (end < start, step 0) or more than 10M names.
    """
    parts: list[list[str]] = []
    pos = 0
    total = 1
    for m in _RANGE.finditer(template):
        parts.append([template[pos:m.start()]])
        a, b = int(m.group(1)), int(m.group(2))
        step = int(m.group(3) or 1)
        if b < a or step <= 0:
            raise InvalidMsg(f'invalid template "{template}": range {m.group(0)} must go up with a positive step')
        width = len(m.group(1)) if m.group(1).startswith("0") and len(m.group(1)) > 1 else 0
        nums = [str(i).zfill(width) for i in range(a, b + 1, step)]
        total *= len(nums)
        if total > MAX_TEMPLATE_NAMES:
            raise InvalidMsg(f'template "{template}" expands to more than {MAX_TEMPLATE_NAMES} names')
        parts.append(nums)
        pos = m.end()
    parts.append([template[pos:]])
    if "{" in template and len(parts) == 1:
        raise InvalidMsg(f'invalid template "{template}": expected ranges like {{0..99}}')
    for combo in itertools.product(*parts):
        yield "".join(combo)


def _bool(v: Any) -> bool:
    if isinstance(v, str):
        return v.lower() in ("1", "true", "yes")
    return bool(v)


MAX_NUM_WORKERS = max(64, 8 * (os.cpu_count() or 2))
"""Most workers a job may ask for per target; above it the job is refused (400).

AIStore clamps a tcb/tco job's num-workers to ``sys.MaxParallelism() + 4``
(``xact/xs/xutils.go`` ``clampNumWorkers``) because each Go worker can keep a CPU
busy. aioetl's workers are coroutines that mostly wait on a pod, and "auto" already
picks up to 64 (``aioetl.engine.scheduler.offline.resolve_num_workers``), so the cap is a multiple of
the CPU count that stays above auto: 8 per CPU, at least 64. Each worker holds
buffers and a pod connection, so memory grows with the number: an unbounded value
(``num_workers=100000``) is a client mistake, answered as one rather than clamped
silently.
"""


@dataclass(kw_only=True)
class TcbMsg:
    """A parsed ``etl-bck``/``etl-listrange`` value.

    Attributes:
        etl_name: the first ETL (``id``); pipeline: the following ETL names.
        prefix: source filter (``etl-bck``); a trailing ``*`` is dropped, as AIStore does.
        prepend: destination name prefix; ext: ``{"jpg": "txt"}`` extension mapping.
        dry_run: transform but write nothing; coer: continue on per-object errors.
        num_workers: 0 = auto, -1 = serial, N = at most N in flight per target.
        obj_names / template: the ``etl-listrange`` selection (both empty = whole bucket).
        to_bck: the ``etl-listrange`` destination bucket (``tobck``).
        force, latest: accepted and ignored for ``ais://`` buckets (module docstring).
        sync: ``synchronize``; only ever True with an ``objnames`` list (ignored there).
        request_timeout_s: per-object transform timeout in seconds (0 = the ETL's own).
        etl_args: transform arguments for every object of the job ("" = none).
    """

    kind: str
    etl_name: str = ""
    pipeline: list[str] = field(default_factory=list)
    prefix: str = ""
    prepend: str = ""
    ext: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False
    force: bool = False
    latest: bool = False
    sync: bool = False
    num_workers: int = 0
    coer: bool = False
    obj_names: list[str] | None = None
    template: str = ""
    to_bck: str = ""
    to_provider: str = ""
    request_timeout_s: float = 0.0
    etl_args: str = ""

    @classmethod
    def parse(cls, kind: str, value: Any, *, remote_src: bool = False) -> TcbMsg:
        """Validate the JSON ``value`` of the action message.

        Args:
            remote_src: the source is a remote (``aws://``) bucket: ``synchronize`` is
                honoured there (destination objects whose source is gone are removed).

        Raises:
            InvalidMsg: not an object, no ETL ``id``, bad types, ``synchronize`` with
                ``prepend`` or without an ``objnames`` list, an invalid ``request_timeout``
                or ``etl_args``, a template that does not expand (checked here, so the
                gateway refuses the job before it creates anything).
        """
        if not isinstance(value, dict):
            raise InvalidMsg(f'{kind}: expected a JSON object as "value"')
        etl = value.get("id") or ""
        if not isinstance(etl, str) or (not etl and kind not in COPY_KINDS):
            raise InvalidMsg(f'{kind}: "id" (the ETL name) is required')
        pipeline = value.get("pipeline") or []
        if not isinstance(pipeline, list) or not all(isinstance(p, str) for p in pipeline):
            raise InvalidMsg(f'{kind}: "pipeline" must be a list of ETL names')
        ext = value.get("ext") or {}
        if not isinstance(ext, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in ext.items()):
            raise InvalidMsg(f'{kind}: "ext" must map extensions to extensions, e.g. {{"jpg": "txt"}}')
        try:
            nw = int(value.get("num-workers") or value.get("num_workers") or 0)
        except (TypeError, ValueError, OverflowError):
            raise InvalidMsg(f'{kind}: "num-workers" must be an integer') from None
        if nw < -1:
            raise InvalidMsg(f'{kind}: "num-workers" must be -1 (serial), 0 (auto) or a positive ceiling')
        if nw > MAX_NUM_WORKERS:
            raise InvalidMsg(f'{kind}: "num-workers" {nw} is above the limit of {MAX_NUM_WORKERS} on this cluster')
        prefix = str(value.get("prefix") or "")
        if prefix.endswith("*"):
            prefix = prefix.rstrip("*")
        msg = cls(
            kind=kind, etl_name=etl, pipeline=[p for p in pipeline if p], prefix=prefix,
            prepend=str(value.get("prepend") or ""), ext={k.lstrip("."): v.lstrip(".") for k, v in ext.items()},
            dry_run=_bool(value.get("dry_run")), force=_bool(value.get("force")),
            latest=_bool(value.get("latest-ver")), sync=_bool(value.get("synchronize")),
            num_workers=nw, coer=_bool(value.get("coer")),
        )
        if msg.sync and msg.prepend:
            raise InvalidMsg(f"{kind}: synchronize and prepend cannot be used together")
        rt = value.get("request_timeout")
        if rt not in (None, "", 0):
            if not isinstance(rt, str):
                raise InvalidMsg(f'{kind}: "request_timeout" must be a duration string such as "30s" or "5m"')
            msg.request_timeout_s = parse_duration_s(rt, 0.0)
        msg.etl_args = _etl_args(kind, value.get("etl_args"))
        if kind in LISTRANGE_KINDS:
            names = value.get("objnames")
            if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
                raise InvalidMsg(f'{kind}: "objnames" must be a list of object names')
            msg.obj_names = names or None
            tmpl = value.get("template") or ""
            if not isinstance(tmpl, str):
                raise InvalidMsg(f'{kind}: "template" must be a string')
            msg.template = tmpl
            tobck = value.get("tobck") or {}
            if isinstance(tobck, dict):
                msg.to_bck = str(tobck.get("name") or "")
                msg.to_provider = str(tobck.get("provider") or "")
            if tmpl and not msg.obj_names:
                next(expand_template(tmpl), None)  # validates every range and the count, lazily
        if msg.sync and not remote_src and not (kind in LISTRANGE_KINDS and msg.obj_names):
            raise InvalidMsg(
                f"{kind}: synchronize is not supported: on an ais:// source AIStore deletes destination objects "
                "missing from the source (xact/xs/prune.go), which aioetl does for remote (aws://) sources only; "
                "run without synchronize")
        if kind in LISTRANGE_KINDS and msg.obj_names:
            msg.sync = False  # AIStore ignores it for a list (xact/xs/tcobjs.go)
        return msg

    def obj_timeout_s(self, etl_obj_timeout_s: float) -> float:
        """The per-object transform timeout of this job: ``request_timeout`` when it is set
        and shorter than the ETL's ``obj_timeout`` (``etl_obj_timeout_s``), else the latter."""
        if self.request_timeout_s > 0 and (etl_obj_timeout_s <= 0 or self.request_timeout_s < etl_obj_timeout_s):
            return self.request_timeout_s
        return etl_obj_timeout_s

    def to_name(self, name: str) -> str:
        """Destination object name: ``ext`` mapping of the last extension, then ``prepend``."""
        if self.ext:
            base, dot, ext = name.rpartition(".")
            if dot and "/" not in ext and ext in self.ext:
                name = f"{base}.{self.ext[ext]}"
        return self.prepend + name

    def to_wire(self) -> dict[str, Any]:
        """The message as targets receive it from the gateway."""
        return {
            "id": self.etl_name, "pipeline": self.pipeline, "prefix": self.prefix, "prepend": self.prepend,
            "ext": self.ext, "dry_run": self.dry_run, "force": self.force, "latest-ver": self.latest,
            "synchronize": self.sync, "num-workers": self.num_workers, "coer": self.coer,
            "objnames": self.obj_names, "template": self.template,
            "tobck": {"name": self.to_bck, "provider": self.to_provider},
            "request_timeout": go_duration(self.request_timeout_s), "etl_args": self.etl_args,
        }


def _etl_args(kind: str, v: Any) -> str:
    """``etl_args`` as the pods get it: a str as is, a dict/list JSON-encoded compactly (the
    SDK's ``ETLConfig.update_qparams``), None/"" as no arguments."""
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    raise InvalidMsg(f'{kind}: "etl_args" must be a string or a JSON object')
