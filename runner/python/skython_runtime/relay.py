"""The egress relay: inside a sandbox (no network), a process that forwards 127.0.0.1:3128 to
the gateway's egress proxy on a Unix socket. The proxy decides; workers without their function's
token are refused."""

import os
import socket
import threading
import traceback

from . import isolation


def start(socket_path, addr):
    """Forks the relay; returns in the zygote once it listens."""
    host, port = addr.rsplit(":", 1)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, int(port)))
    listener.listen(128)
    if os.fork() != 0:
        listener.close()  # workers must not inherit it
        return
    code = 0
    try:
        os.close(3)  # the zygote's control socket: its end must close when the zygote dies
        isolation.die_with_parent()
        isolation.drop_privileges()
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=_relay, args=(conn, socket_path), daemon=True).start()
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
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
