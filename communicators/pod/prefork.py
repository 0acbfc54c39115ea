"""Pre-forked serving processes: ``workers`` children that each serve the same port
(``SO_REUSEPORT``: the kernel spreads connections), watched by the parent.

The parent announces once every child listens, forwards SIGTERM/SIGINT to the
children and returns when they have exited; if one dies on its own, the others
are stopped and the parent returns that child's exit code. A child gets SIGTERM
when the parent dies (Linux ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
from collections.abc import Callable

__all__ = ["run_prefork"]


def _set_pdeathsig(sig: int) -> None:
    """Linux: get ``sig`` when the parent dies."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, sig)


def _ready_signal(fd: int) -> Callable[[], None]:
    """What a child calls once it listens: one byte on its ready pipe ``fd``, then close it."""

    def ready() -> None:
        os.write(fd, b"1")
        os.close(fd)

    return ready


def run_prefork(workers: int, child: Callable[[int, Callable[[], None]], int],
                announce: Callable[[], None]) -> int:
    """Fork ``workers`` children and supervise them; returns the exit code.

    Args:
        workers: how many children (at least 2 makes sense).
        child: run in each child as ``child(index, ready)``; it serves until told
            to stop, calls ``ready()`` once it listens, and returns its exit code.
        announce: called in the parent once every child is ready (not when the
            pod is stopped before).

    Returns:
        0 when stopped by a signal; else the exit code of the first child that
        exited on its own (1 if that was 0 or a signal).
    """
    children: dict[int, int] = {}  # pid -> read end of its ready pipe
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    for index in range(workers):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.close(r)
                for fd in children.values():
                    os.close(fd)
                _set_pdeathsig(signal.SIGTERM)
                if os.getppid() != parent:  # the parent died before PDEATHSIG was set
                    os._exit(0)  # (not "== 1": in a PID namespace the parent *is* PID 1)
                code = child(index, _ready_signal(w))
            except BaseException as e:
                print(f"worker {os.getpid()} failed: {e!r}", file=sys.stderr, flush=True)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(w)
        children[pid] = r
    # wait until every worker listens (or one dies)
    waiting = dict(children)
    while waiting and not stopping:
        try:
            readable, _, _ = select.select(list(waiting.values()), [], [], 0.2)
        except InterruptedError:
            continue
        for fd in readable:
            os.read(fd, 1)
            for pid, f in list(waiting.items()):
                if f == fd:
                    del waiting[pid]
        for pid in list(waiting):
            done, _status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.pop(pid, None)
                forward(signal.SIGTERM, None)
                break
    for fd in children.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    if not stopping:
        announce()
    exit_code = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid not in children:
            continue
        del children[pid]
        code = os.waitstatus_to_exitcode(status)
        if not stopping:
            print(f"worker {pid} exited with code {code}; stopping the pod", file=sys.stderr, flush=True)
            exit_code = code if code > 0 else 1
            forward(signal.SIGTERM, None)
    return exit_code
