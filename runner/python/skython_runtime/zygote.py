"""The zygote: imports the runtime libraries once, then answers the gateway's requests on its
control socket (fd 3): inspect a source, or fork a worker."""

import datetime
import gc
import json
import os
import signal
import socket
import sys
import time
import traceback

from . import isolation, relay
from .codec import encode
from .inspection import inspect_source
from .protocol import HELLO, INSPECT, SPAWN, SPAWN_FAILED, SPAWNED, Channel, recv_control
from .worker import worker_main

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
    if os.environ.get("SKYTHON_EGRESS_SOCKET"):
        relay.start(os.environ["SKYTHON_EGRESS_SOCKET"], os.environ["SKYTHON_EGRESS_RELAY"])
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
        except (EOFError, ConnectionResetError):
            return
        if kind == INSPECT:
            req = json.loads(payload)
            out.send_json(INSPECT, inspect_source(req["source"], req["filename"],
                                                   req.get("entrypoint")))
        elif kind == SPAWN:
            spec = json.loads(payload)
            if len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                out.send_json(SPAWN_FAILED, {"message": f"expected one socket, got {len(fds)}"})
                continue
            try:
                pid = os.fork()
            except OSError as e:
                os.close(fds[0])
                out.send_json(SPAWN_FAILED, {"message": f"fork failed: {e}"})
                continue
            if pid == 0:
                code = 0
                try:
                    ctl.close()
                    os.set_inheritable(fds[0], False)
                    worker_main(fds[0], spec)
                except BaseException:  # noqa: BLE001
                    traceback.print_exc()
                    code = 1
                finally:
                    os._exit(code)
            os.close(fds[0])
            out.send_json(SPAWNED, {"pid": pid})
        else:
            for fd in fds:
                os.close(fd)
