"""The egress relay: a worker of a function that may go out (`network: internet`) has only its
own loopback, so before any user code it forks this process in its network namespace, which
forwards 127.0.0.1:3128 (the worker's HTTP(S)_PROXY) to the gateway's egress proxy on a Unix
socket. The proxy decides; calls without the function's token are refused. The relay is in the
worker's process group and control group, and dies with it."""

import os
import socket
import threading

from . import isolation


def wanted(env):
    """Whether a worker with this environment (the function's, with its egress grant) has a
    proxy to relay to: the sandbox has one and the function's proxy address is the relay's."""
    addr = os.environ.get("SKYTHON_EGRESS_RELAY")
    return bool(addr and os.environ.get("SKYTHON_EGRESS_SOCKET")
                and addr in (env or {}).get("HTTPS_PROXY", ""))


def start(keep_open):
    """Forks the relay; returns in the worker once it listens. `keep_open` is the worker's
    socket, which the relay closes: the gateway must see the worker's end when the worker dies."""
    socket_path, addr = os.environ["SKYTHON_EGRESS_SOCKET"], os.environ["SKYTHON_EGRESS_RELAY"]
    host, port = addr.rsplit(":", 1)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, int(port)))
    listener.listen(128)
    if os.fork() != 0:
        listener.close()  # the function's code must not accept on it
        return
    code = 0
    try:
        keep_open.close()
        isolation.die_with_parent()
        isolation.drop_privileges()
        isolation.isolate_from_siblings()
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=_relay, args=(conn, socket_path), daemon=True).start()
    except BaseException:  # noqa: BLE001 - nobody reads its stderr; the worker's calls fail
        code = 1
    finally:
        os._exit(code)


def _relay(conn, socket_path):
    with conn:
        try:
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            up.connect(socket_path)
        except OSError:
            return
        with up:
            back = threading.Thread(target=_pump, args=(up, conn), daemon=True)
            back.start()
            _pump(conn, up)
            back.join()


def _pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
