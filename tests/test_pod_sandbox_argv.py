"""Pure tests of the pod sandbox's command line (aioetl.engine.target.pods.sandbox_argv) and of
the once-only warning where pods cannot be confined. No process is started."""

from __future__ import annotations

import os
from typing import Any

import pytest

from aioetl.engine.target import pods


def _argv(tmp_path: Any, **kw: Any) -> list[str]:
    data = tmp_path / "data"
    mp = data / "targets" / "t1" / "mp0"
    pod = data / "etl-pods" / "e" / "t1"
    venv = data / "etl-venvs" / "abc"
    for d in (mp, pod, venv):
        d.mkdir(parents=True)
    args = dict(bwrap="/usr/bin/bwrap", python="/usr/bin/python3", data_dir=str(data), read_dirs=[str(mp)],
                pod_dir=str(pod), ro_paths=[str(venv), str(tmp_path), "relative/path"], bind_port=4321)
    args.update(kw)
    return pods.sandbox_argv(**args)


def _mounts(argv: list[str]) -> list[tuple[str, str]]:
    """``(option, destination)`` of each mount, in order."""
    out = []
    for i, a in enumerate(argv):
        if a in ("--ro-bind", "--ro-bind-try", "--bind"):
            out.append((a, argv[i + 2]))
        elif a in ("--tmpfs", "--remount-ro", "--proc", "--dev"):
            out.append((a, argv[i + 1]))
    return out


def test_namespaces_identity_and_capabilities(tmp_path: Any) -> None:
    a = _argv(tmp_path)
    for opt in ("--unshare-user", "--unshare-pid", "--as-pid-1", "--unshare-ipc", "--unshare-uts", "--die-with-parent"):
        assert opt in a
    assert a[a.index("--uid") + 1] == a[a.index("--gid") + 1] == str(pods.POD_UID)
    assert a[a.index("--cap-drop") + 1] == "ALL"
    assert "--unshare-net" not in a  # loopback is shared; Landlock limits binds


def test_data_root_masked_and_only_allowed_paths_inside(tmp_path: Any) -> None:
    a = _argv(tmp_path)
    m = _mounts(a)
    data = os.path.realpath(tmp_path / "data")
    mask = m.index(("--tmpfs", data))
    inside = [(o, d) for o, d in m if d.startswith(data + "/")]
    assert inside, m
    assert all(m.index(x) > mask for x in inside), "something of the data root is mounted before the mask"
    assert sorted(d[len(data):] for _, d in inside) == ["/etl-pods/e/t1", "/etl-venvs/abc", "/targets/t1/mp0"]
    assert ("--bind", data + "/etl-pods/e/t1") in inside  # the only writable path
    assert all(o == "--ro-bind" for o, d in inside if not d.endswith("/etl-pods/e/t1"))
    writable = [d for o, d in m if o == "--bind"]
    assert writable == [data + "/etl-pods/e/t1"]
    assert m[-2:] == [("--remount-ro", data), ("--remount-ro", "/")]
    assert not any("relative" in d for _, d in m)


def test_data_root_given_as_a_read_only_path_is_still_hidden(tmp_path: Any) -> None:
    data = str(tmp_path / "data")
    m = _mounts(_argv(tmp_path, ro_paths=[data, data + "/gateway", str(tmp_path / "data" / "etl-venvs")]))
    assert not any(d in (data, data + "/gateway", data + "/etl-venvs") for o, d in m if o in ("--ro-bind", "--bind"))


def test_no_shadow_no_whole_etc_no_root(tmp_path: Any) -> None:
    m = _mounts(_argv(tmp_path))
    dests = [d for _, d in m]
    assert "/etc" not in dests and "/" not in [d for o, d in m if o != "--remount-ro"]
    assert not any(d.endswith("shadow") for d in dests)
    assert "/etc/ssl" in dests and "/usr" in dests


def test_landlock_prefix_binds_own_port(tmp_path: Any) -> None:
    a = _argv(tmp_path)
    tail = a[a.index("--") + 1:]
    assert tail[:4] == ["/usr/bin/python3", "-I", "-S", "-c"] and tail[5] == "4321"
    a2 = pods.sandbox_argv(bwrap="bwrap", python="py", data_dir=str(tmp_path), read_dirs=[],
                           pod_dir=str(tmp_path / "p"), ro_paths=[], bind_port=1, landlock=False)
    assert a2[-1] == "--"


def test_unconfined_warning_is_logged_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    c = pods.Confinement(False, "bwrap failed: user namespaces are disabled", "/usr/bin/bwrap", 0)
    monkeypatch.setattr(pods, "_CONFINEMENT", c)
    monkeypatch.setattr(pods, "_WARNED", False)
    seen: list[str] = []
    monkeypatch.setattr(pods.log, "warning", lambda event, **kw: seen.append(kw.get("detail", "")))
    for _ in range(3):
        rt = pods.LocalProcessRuntime(str(tmp_path), pid_namespace=False)
        assert not rt.confined
    assert len(seen) == 1 and "NOT confined" in seen[0] and "user namespaces are disabled" in seen[0]
    assert pods.Confinement(True, "", "/usr/bin/bwrap", 7).warning() == ""
    assert "Landlock" in pods.Confinement(True, "", "/usr/bin/bwrap", 3).warning()


def test_symlinked_mountpath_is_seen_where_the_target_names_it(tmp_path: Any) -> None:
    """The demo links a data root's ``targets`` to tmpfs; the target names FQNs by the
    linked path, so the pod must see the mountpath there (it saw nothing: "file not found")."""
    data = tmp_path / "data"
    real = tmp_path / "fast" / "t1" / "mp0"
    real.mkdir(parents=True)
    (data / "targets").mkdir(parents=True)
    os.symlink(tmp_path / "fast" / "t1", data / "targets" / "t1")
    pod = data / "etl-pods" / "e" / "t1"
    pod.mkdir(parents=True)
    a = pods.sandbox_argv(bwrap="bwrap", python="py", data_dir=str(data),
                          read_dirs=[str(data / "targets" / "t1" / "mp0")], pod_dir=str(pod), ro_paths=[], bind_port=1)
    binds = [(a[i + 1], a[i + 2]) for i, x in enumerate(a) if x == "--ro-bind"]
    assert (str(real), str(data / "targets" / "t1" / "mp0")) in binds
    mask = a.index("--tmpfs")
    assert a.index(str(data / "targets" / "t1" / "mp0")) > mask  # mounted over the empty data root
