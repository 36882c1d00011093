"""The zygote: imports the runtime libraries once, then answers the gateway's requests on its
control socket (fd 3): inspect a source, or fork a worker."""

import datetime
import gc
import json
import os
import resource
import signal
import socket
import sys
import time
import traceback

from . import inspection, isolation
from .codec import encode
from .inspection import MAX_SOURCE_BYTES, inspect_source
from .protocol import FAILED, HELLO, INSPECT, SPAWN, SPAWNED, Channel, recv_control
from .worker import lower_limit, mapped_bytes, worker_main

DEFAULT_PRELOAD = "numpy,pandas,scipy,requests,bs4"


def preload():
    names = os.environ.get("SKYTHON_PRELOAD", DEFAULT_PRELOAD)
    loaded, missing = [], []
    for name in filter(None, (n.strip() for n in names.split(","))):
        try:
            __import__(name)
            loaded.append(name)
        except Exception as e:  # noqa: BLE001
            missing.append(f"{name}: {type(e).__name__}: {e}")
    # First-use work that import alone does not do, so that no worker pays it.
    if "numpy" in sys.modules:
        np = sys.modules["numpy"]
        a = np.arange(16, dtype=float).reshape(4, 4)
        encode({"x": (a @ a).sum(), "y": a[0]})
    if "pandas" in sys.modules:
        pd = sys.modules["pandas"]
        df = pd.DataFrame({"a": [1, 2], "b": [0.5, None], "t": pd.to_datetime(["2024-01-01"] * 2)})
        encode({"df": df, "s": df["a"], "sum": df.sum(numeric_only=True)})
        df.describe()
    encode({"d": datetime.datetime.now(), "b": b"x", "s": {1}})
    return loaded, missing


def main():
    isolation.load_worker_filter()
    if isolation.sandboxed():
        # Workers run as the same uid: keep them out of the zygote's memory and /proc files even
        # where Landlock is too old to (isolation.isolate_from_siblings).
        isolation.not_dumpable()
    # Nothing but the control socket is inherited (the zygote's seccomp descriptors are read
    # by bubblewrap already).
    os.closerange(4, os.sysconf("SC_OPEN_MAX"))
    ctl = socket.socket(fileno=3)
    started = time.perf_counter()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    isolation.die_with_parent()
    loaded, missing = preload()
    import skython  # noqa: F401 - imported once here so that workers inherit it
    gc.collect()
    gc.freeze()  # keep the preloaded objects out of the workers' collections (fewer COW faults)
    Channel(ctl).send_json(HELLO, {
        "pid": os.getpid(), "python": sys.version.split()[0], "preloaded": loaded,
        "missing": missing, "startMs": (time.perf_counter() - started) * 1000})
    out = Channel(ctl)
    while True:
        try:
            kind, payload, fds = recv_control(ctl)
        except (EOFError, OSError):
            return  # the gateway closed the channel: nothing left to serve
        try:
            answer, body = _handle(kind, payload, fds, ctl)
        except Exception as e:  # noqa: BLE001 - a request that fails is answered, not fatal
            answer, body = FAILED, {"message": f"the zygote failed: {type(e).__name__}: {e}"}
        out.queue(answer, body if isinstance(body, bytes) else encode(body))
        out.flush()


def _handle(kind, payload, fds, ctl):
    """One control request's answer: its kind and a JSON-able object (or JSON bytes)."""
    try:
        if kind == SPAWN:
            return _spawn(payload, fds, ctl)
        if kind == INSPECT:
            return _inspect(payload, fds, ctl)
        return FAILED, {"message": f"unknown request {kind!r}"}
    finally:
        for fd in fds:  # a forked child has its own copy
            os.close(fd)


def _spawn(payload, fds, ctl):
    spec = json.loads(payload)
    if len(fds) != 1:
        return FAILED, {"message": f"expected one socket, got {len(fds)}"}
    return SPAWNED, {"pid": _fork(ctl, worker_main, fds[0], spec)}


def _inspect(payload, fds, ctl):
    """Inspects a source in a child process within inspection's limits: whatever the source
    exhausts (recursion, memory, CPU, time), the child fails, not the zygote. The zygote does
    not wait for it: the child answers on the socket it was given, so a slow source holds the
    control channel no longer than a fork."""
    req = json.loads(payload)
    source = req["source"]
    too_large = inspection.check_size(source, int(req.get("maxSourceBytes") or MAX_SOURCE_BYTES))
    if too_large:
        return INSPECT, too_large
    if len(fds) != 1:
        return FAILED, {"message": f"expected one socket, got {len(fds)}"}
    pid = _fork(ctl, _inspector_main, fds[0], source, req["filename"], req.get("entrypoint"))
    return SPAWNED, {"pid": pid, "deadlineSeconds": inspection.WALL_SECONDS,
                     "unanswered": inspection.too_complex()}


def _fork(ctl, main, fd, *args):
    """Forks a child that runs `main(fd, *args)` with `fd` (its socket to the gateway) and
    nothing of the control channel, then exits; its pid. Children are reaped by the kernel
    (SIGCHLD is ignored)."""
    try:
        pid = os.fork()
    except OSError as e:
        raise RuntimeError(f"fork failed: {e}") from None
    if pid == 0:
        code = 0
        try:
            ctl.close()
            os.set_inheritable(fd, False)
            main(fd, *args)
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    return pid


def _inspector_main(fd, source, filename, entrypoint):
    """The inspection child: confined like a worker (minus the private /tmp, which it has no
    use for) and limited, it writes its answer as one frame on its socket: `INSPECT` with the
    verdict, or `FAILED` if it could not inspect (not a verdict on the source)."""
    try:
        _limit_inspector()
        isolation.die_with_parent()
        gc.disable()  # short-lived: collections would only slow the parse (by a third)
        isolation.drop_privileges()
        isolation.isolate_from_siblings()
    except BaseException as e:  # noqa: BLE001
        kind, answer = FAILED, {
            "message": f"confining the inspection failed: {type(e).__name__}: {e}"}
    else:
        try:
            kind, answer = INSPECT, inspect_source(source, filename, entrypoint)
        except BaseException as e:  # noqa: BLE001
            kind, answer = FAILED, {"message": f"{type(e).__name__}: {e}"}
    out = Channel(socket.socket(fileno=fd))
    out.queue(kind, encode(answer))
    out.flush()


def _limit_inspector():
    # Its own wall-clock bound first: nobody waits for the child (the gateway gives up at the
    # same deadline), and a child blocked in anything but the CPU must still end. SIGALRM's
    # default action ends it.
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(inspection.WALL_SECONDS)
    mem = mapped_bytes() + inspection.MEMORY_BYTES
    lower_limit(resource.RLIMIT_AS, mem)
    # Past the soft limit, SIGXCPU ends the child (its default action): the C parser never
    # returns to Python to run a handler.
    soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    cpu = inspection.CPU_SECONDS
    if hard == resource.RLIM_INFINITY or hard > cpu:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    signal.signal(signal.SIGXCPU, signal.SIG_DFL)
    lower_limit(resource.RLIMIT_CORE, 0)
