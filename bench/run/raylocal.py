"""The local Ray instance `bench submit` starts: on the loopback interface only, and no leftovers of a
killed one.

    with loopback_only():    # around ray.init(address="local"): every Ray port listens on 127.0.0.1
        ray.init(...)
    reap_dead_sessions()     # stop the agents a SIGKILLed driver's instance left behind

Ray has no authentication, so a local instance must not listen on the machine's network interfaces. Ray
binds its servers (GCS, raylet, object manager, workers, agents) to the node's IP, and takes 127.0.0.1 as
that IP only where it believes it cannot form a cluster (`ray_constants.ENABLE_RAY_CLUSTER`, which the
environment variable RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER sets at import). `ray.init(_node_ip_address=
"127.0.0.1")` is not enough: it is resolved back to the routable address. Joining a cluster (`--address`)
is left as it is.

When the driver is killed with SIGKILL, Ray's head processes die with it (they are started with
PR_SET_PDEATHSIG), but the raylet's two agents (`ray::DashboardAgent`, `ray::RuntimeEnvAgent`) linger for
about a minute, blocked publishing an error to the dead GCS. They are named `ray::NAME` and hold files of
their session folder open (`.../session_<time>_<pid>/logs/...`): a `ray::` process whose session has no
live raylet is an orphan. Only processes of this user are looked at, and only `ray::` ones are stopped.
"""

from __future__ import annotations

import os
import re
import signal
import time
from contextlib import contextmanager
from typing import Iterator

_SESSION = re.compile(r"(/\S*/session_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+_\d+)/")


@contextmanager
def loopback_only() -> Iterator[None]:
    """Around a local `ray.init`: the node's IP is 127.0.0.1, so every port it opens binds there. Ray reads
    the setting when the node starts; it is restored afterwards (this process may later join a cluster,
    and `ray start` refuses to join one with the environment variable set, so that is left alone)."""
    from ray._private import ray_constants

    previous = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _session_of(pid: int) -> str | None:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            match = _SESSION.match(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
        if match:
            return match.group(1)
    return None


def _processes() -> Iterator[tuple[int, bytes]]:
    """(pid, command line) of this user's processes, this one excluded."""
    me, uid = os.getpid(), os.getuid()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            try:
                if os.stat(f"/proc/{entry}").st_uid != uid:
                    continue
            except OSError:
                continue
            yield int(entry), _read(f"/proc/{entry}/cmdline")


def dead_session_processes() -> list[tuple[int, str, str]]:
    """(pid, session folder, command) of this user's Ray processes (`ray::NAME`) whose session has no
    live raylet."""
    if not os.path.isdir("/proc"):
        return []
    procs = list(_processes())
    live = {m.group(1) for _, cmd in procs if b"raylet" in cmd.split(b"\0", 1)[0]
            for m in [_SESSION.search(cmd.replace(b"\0", b" ").decode(errors="replace") + "/")] if m}
    found = []
    for pid, cmd in procs:
        if not cmd.startswith(b"ray::"):  # Ray names its workers and agents so; nothing else is touched
            continue
        session = _session_of(pid)
        if session is not None and session not in live:
            found.append((pid, session, cmd.replace(b"\0", b" ").decode(errors="replace").strip()))
    return found


def reap_dead_sessions(grace_s: float = 3.0) -> list[tuple[int, str, str]]:
    """Stop the processes `dead_session_processes` finds: SIGTERM, then SIGKILL after `grace_s` (their
    blocked call ignores SIGTERM). Returns what was stopped."""
    victims = dead_session_processes()
    for pid, _, _ in victims:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    alive = list(victims)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [v for v in alive if _running(v[0])]
    for pid, _, _ in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return victims


def _running(pid: int) -> bool:
    status = _read(f"/proc/{pid}/status")
    return bool(status) and b"State:\tZ" not in status
