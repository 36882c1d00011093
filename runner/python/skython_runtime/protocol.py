"""Frames on a stream socket (runner/PROTOCOL.md): u32 LE payload length, u8 kind, payload."""

import array
import collections
import socket
import struct
import time

from .codec import ENCODE

HEADER = struct.Struct("<IB")
LARGE_FRAME = 64 * 1024
KINDS = tuple(bytes([i]) for i in range(256))

# Control channel (gateway <-> zygote). FAILED answers any request the zygote could not handle.
HELLO, SPAWN, SPAWNED, FAILED, INSPECT = b"H", b"S", b"P", b"E", b"I"
# Worker channel (gateway <-> worker).
STARTED, GO, READY, LOAD_ERROR, CALL, STATE_REQ, STATE_ANS, LOG, RAN, OK, ERROR = (
    b"T", b"W", b"R", b"L", b"C", b"Q", b"A", b"G", b"U", b"O", b"X")
# Who the calls after it are for (gateway -> worker, only when it changes; JSON).
CALLER = b"I"
# With the state cache on: a write-behind store (worker -> gateway, unanswered) and another
# worker's committed write, or a cache entry to forget (gateway -> worker).
STATE_WRITE, STATE_PUSH = b"V", b"N"


class Channel:
    """Length-framed messages on a stream socket.

    The gateway pipelines calls: several may arrive in one read. Frames to send are queued and
    written together by `flush`, so a worker answers a batch of short calls with one system call
    (and one wake-up of the gateway) instead of one per call.
    """

    def __init__(self, sock):
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = []
        self.held_since = 0.0  # when the oldest frame in the outbox was queued
        self.deferred = collections.deque()  # calls that arrived during a state request
        # The running call's answer will be held: more calls are waiting and calls are short.
        self.batching = False

    def queue(self, kind, payload=b""):
        if not self.outbox:
            self.held_since = time.monotonic()
        self.outbox.append(HEADER.pack(len(payload), kind[0]))
        self.outbox.append(payload)

    def flush(self):
        out = self.outbox
        if not out:
            return
        self.outbox = []
        if sum(map(len, out)) < LARGE_FRAME:
            self.sock.sendall(b"".join(out))
        else:  # no copy of a large payload
            for part in out:
                self.sock.sendall(part)

    def queue_json(self, kind, obj):
        self.queue(kind, "".join(ENCODE(obj, 0)).encode())

    def send_json(self, kind, obj):
        self.queue_json(kind, obj)
        self.flush()

    def ready(self):
        """Whether a whole frame has already arrived (another call is waiting)."""
        return bool(self.deferred) or self.whole()

    def whole(self):
        """Whether the inbox holds a whole frame, which `read` returns without waiting."""
        inbox = self.inbox
        return (len(inbox) >= HEADER.size
                and len(inbox) >= HEADER.size + HEADER.unpack_from(inbox)[0])

    def receive_arrived(self):
        """Moves what the socket holds into the inbox, without waiting for more."""
        try:
            while True:
                data = self.sock.recv(LARGE_FRAME, socket.MSG_DONTWAIT)
                self.inbox += data
                if len(data) < LARGE_FRAME:  # drained, or closed (b""): `read` will say so
                    return
        except BlockingIOError:
            pass

    def recv(self):
        return self.deferred.popleft() if self.deferred else self.read()

    def read(self):
        """The next frame from the socket (after what was already received)."""
        inbox = self.inbox
        while len(inbox) < HEADER.size:
            self._fill()
        n, kind = HEADER.unpack_from(inbox)
        end = HEADER.size + n
        if len(inbox) >= end:
            payload = inbox[HEADER.size:end]
            del inbox[:end]
        else:  # a large frame: read its rest in place
            payload = bytearray(n)
            have = len(inbox) - HEADER.size
            payload[:have] = inbox[HEADER.size:]
            inbox.clear()
            view = memoryview(payload)[have:]
            while view:
                got = self.sock.recv_into(view)
                if not got:
                    raise EOFError
                view = view[got:]
        return KINDS[kind], payload

    def _fill(self):
        data = self.sock.recv(LARGE_FRAME)
        if not data:
            raise EOFError
        self.inbox += data


def recv_control(sock):
    """One control frame and any file descriptors sent with it."""
    fds, hdr = [], b""
    while len(hdr) < HEADER.size:
        data, anc, _flags, _addr = sock.recvmsg(
            HEADER.size - len(hdr), socket.CMSG_SPACE(16), socket.MSG_CMSG_CLOEXEC)
        if not data:
            raise EOFError
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(array.array("i", cdata[: len(cdata) - len(cdata) % 4]))
        hdr += data
    n, kind = HEADER.unpack(hdr)
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes([kind]), bytes(buf), fds
