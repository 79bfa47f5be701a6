"""The Ray instance a run uses: a local one (on the loopback interface only, with no leftovers of a killed
one) or a cluster joined by address, and which hardware targets its nodes can run.

    init_ray(None)                 # a local instance; init_ray("10.0.0.5:6379") joins a cluster
    unschedulable([Hardware.parse("cuda:H100")])   # {target: why no alive node can ever run it}
    reap_dead_sessions()           # stop the agents a SIGKILLed driver's instance left behind

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
import socket
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from bench.errors import BenchError
from bench.spec.hardware import Hardware
from bench.spec.jobs import NATIVE_ENV

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


@contextmanager
def sigterm_stays_with_the_caller() -> Iterator[None]:
    """Around `ray.init` in the main thread: a SIGTERM reaches the handler the caller set, whenever it comes.

    ray.init puts two handlers of its own in its place. As it starts, a Python one (`sys.exit(15)`): its
    SystemExit is raised wherever the main thread happens to be, and inside a callback that Ray's C++ code
    runs it is printed and dropped, so start-up went on and a run told to stop ran to its end. Once the
    driver's core worker exists, Abseil's failure-signal handler: it dumps a stack, passes the signal on and
    arms a 3 s alarm that aborts the process (exit -6). The first is not installed; the second is not
    installed in this process (the driver loses Abseil's C++ stack dump on a crash, workers keep theirs).
    Both are settings Ray reads at the call (`ray._private`); the test of signals during start-up watches
    them."""
    from ray._private import ray_constants, utils

    previous = utils.set_sigterm_handler, ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER
    utils.set_sigterm_handler = lambda handler: None
    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    try:
        yield
    finally:
        utils.set_sigterm_handler, ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = previous


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


def unschedulable(hardware: list[Hardware]) -> dict[Hardware, str]:
    """Hardware targets that no alive node of the connected cluster can ever run, with the reason."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    out = {}
    for target in hardware:
        if not any(target.fits(r) for r in nodes):
            have = "; ".join("{" + ", ".join(f"{k}={v:g}" for k, v in sorted(r.items())
                                             if not k.startswith(("node:", "memory", "object_store"))) + "}"
                             for r in nodes)
            out[target] = (f"no node of the Ray cluster can run hardware '{target}' (needs {target.ray_options()}; "
                       f"nodes have: {have or 'none'})")
    return out


def timing_cpus(hardware: list[Hardware]) -> dict[Hardware, float]:
    """Per target, the CPUs of the largest alive node that can run it. A latency stage reserves them all,
    so that no other stage (a prune, an evaluation, another timing) runs beside it on its node and shares
    its cores, caches and memory bandwidth while it times; its own threads stay what the target says."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    out = {}
    for target in hardware:
        fitting = [r.get("CPU", 0) for r in nodes if target.fits(r)]
        if fitting:
            out[target] = max(max(fitting), float(target.threads))
    return out


# What a stage's behaviour depends on in the driver's environment. A local instance's workers inherit the
# driver's environment; a joined cluster's workers inherit their raylet's, so these are passed with the job.
FORWARDED_ENV = (*NATIVE_ENV, "SPARSEBENCH_MODEL_CACHE")


def resolve_address(flag: str | None) -> tuple[str | None, str]:
    """The cluster to join and where that came from: `--address`, else `RAY_ADDRESS` (as Ray itself reads it,
    and as `ray job submit` sets it for its entrypoint), else None: a local instance."""
    if flag:
        return flag, "--address"
    env = os.environ.get("RAY_ADDRESS", "").strip()
    return (env, "RAY_ADDRESS") if env else (None, "--address")


def check_address(address: str, timeout_s: float = 5.0, source: str = "--address") -> None:
    """Fail fast, in one line, when nothing listens at a Ray address of the form host:port."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise BenchError(f"{source}: '{address}' is not host:port (e.g. 10.0.0.5:6379), 'auto' or ray://host:10001")
    drop = "drop --address" if source == "--address" else f"unset {source}"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as err:
        raise BenchError(f"{source}: no Ray cluster answers at {address} ({err.strerror or err}); "
                         f"start one with `ray start --head` or {drop} to run locally") from None


def job_env() -> dict[str, str]:
    """The environment every worker of this run gets: the pool's wait policy (see bench.cli.OMP_WAIT_POLICY)
    and the driver's FORWARDED_ENV settings."""
    env = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    env.update({k: os.environ[k] for k in FORWARDED_ENV if k in os.environ})
    return env


def init_ray(address: str | None, oom_retries: int = 2, source: str = "--address") -> bool:
    """Connect to `address` or start a local instance (loopback only); True if this call started Ray."""
    import logging
    from contextlib import nullcontext

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray re-runs a task its memory monitor killed without limit by default: a stage that never fits would
    # be retried forever. The owner (this driver) reads the limit when it starts.
    os.environ.setdefault("RAY_task_oom_retries", str(oom_retries))
    if ray.is_initialized():
        return False
    local = not address or address == "local"
    if local:
        for pid, session, cmd in reap_dead_sessions():
            print(f"bench: stopped {cmd} (pid {pid}), left behind by a killed run's Ray instance "
                  f"({os.path.basename(session)})", file=sys.stderr, flush=True)
    main = threading.current_thread() is threading.main_thread()
    try:
        with loopback_only() if local else nullcontext(), \
                sigterm_stays_with_the_caller() if main else nullcontext():  # local: reachable from this machine only
            ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR, configure_logging=True,
                     # workers import torch after this is set: see bench.cli.OMP_WAIT_POLICY
                     runtime_env={"env_vars": job_env()})
    except Exception as err:
        if not address or not isinstance(err, (ConnectionError, RuntimeError, ray.exceptions.RayError)):
            raise
        message = " ".join(str(err).split())
        if "Authentication" in message or "auth" in message.lower():
            raise BenchError(f"{source}: the Ray cluster at {address} wants token authentication: set "
                             "RAY_AUTH_MODE=token and make its token readable (RAY_AUTH_TOKEN or ~/.ray/auth_token)") from None
        raise BenchError(f"{source}: could not join the Ray cluster at {address}: {message[:500]}") from None
    return True
