"""The pod's settings: :class:`PodConfig`, read from the environment once, at the
entry point (or handed in by a test)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from aioetl.communicators.wire.const import (
    DEFAULT_DIRECT_PUT_RETRIES,
    ENV_AUTHN_TOKEN,
    ENV_DIRECT_FQN,
    ENV_DIRECT_PUT_BACKOFF_S,
    ENV_DIRECT_PUT_RETRIES,
    ENV_TARGET_URL,
    RETRY_BACKOFF_FIRST_S,
)

__all__ = ["PodConfig"]


def _parse_bool(v: str | None) -> bool:
    return (v or "").strip().lower() in ("1", "true", "t", "yes", "y", "on")


@dataclass(frozen=True, kw_only=True)
class PodConfig:
    """What a pod learns from its environment (read once, by :meth:`from_env`).

    Attributes:
        target_url: ``AIS_TARGET_URL``: ``<target>/v1/etl/_object/<etl>/<secret>``.
        direct_fqn: ``ETL_DIRECT_FQN``: buffered ``transform()`` gets the FQN as ``str``.
        direct_put_retries: ``AIS_DIRECT_PUT_RETRIES`` (default 3): local retries of a
            replayable direct put.
        direct_put_backoff_s: first retry delay (doubles, capped at 30 s);
            ``AIOETL_DIRECT_PUT_BACKOFF_S``, default 1 s as aistore[etl].
        authn_token: ``AIS_AUTHN_TOKEN``: sent as ``Authorization: Bearer`` on
            requests to targets.
    """

    target_url: str
    direct_fqn: bool = False
    direct_put_retries: int = DEFAULT_DIRECT_PUT_RETRIES
    direct_put_backoff_s: float = RETRY_BACKOFF_FIRST_S
    authn_token: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PodConfig:
        """Read the pod's environment.

        Raises:
            EnvironmentError: ``AIS_TARGET_URL`` is missing or empty (as aistore[etl]),
                or a number does not parse.
        """
        env = os.environ if environ is None else environ
        target = (env.get(ENV_TARGET_URL) or "").strip()
        if not target:
            raise OSError(f"Environment variable '{ENV_TARGET_URL}' must be set.")
        try:
            retries = int(env.get(ENV_DIRECT_PUT_RETRIES) or DEFAULT_DIRECT_PUT_RETRIES)
            backoff = float(env.get(ENV_DIRECT_PUT_BACKOFF_S) or RETRY_BACKOFF_FIRST_S)
        except ValueError as e:
            raise OSError(f"bad direct-put retry settings: {e}") from None
        return cls(
            target_url=target.rstrip("/"),
            direct_fqn=_parse_bool(env.get(ENV_DIRECT_FQN)),
            direct_put_retries=max(0, retries),
            direct_put_backoff_s=max(0.0, backoff),
            authn_token=env.get(ENV_AUTHN_TOKEN) or None,
        )
