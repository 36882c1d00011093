"""A worker's cache of its function's state, kept when the gateway is the state's only writer
(runner/PROTOCOL.md, "State cache").

A plain `store` becomes a write-behind `V` frame that nothing answers, and a `load` of a key the
cache holds costs no round trip. The gateway keeps the cache true: it pushes (`N`) every write
that another worker of the function committed, and answers no call of this worker before the
writes the call made are committed.
"""

import select

from .codec import DECODER
from .protocol import STATE_PUSH, STATE_WRITE

# Larger values are loaded from the gateway each time, so the cache stays small.
CACHE_VALUE_MAX = 16 * 1024
CACHE_MAX_KEYS = 4096
# What the cached text may take in all (it counts against the function's memory).
CACHE_MAX_BYTES = 4 << 20
# `get`'s answer for a key the cache does not know (None is a known absence).
MISS = object()
# The key a reset touches: every one.
ALL = None


class StateCache:
    def __init__(self, chan):
        self.chan = chan
        self.values = {}  # key -> JSON text, or None for a key known to be absent
        self.writes = 0  # this worker's write-behind writes so far; the n-th is numbered n
        self.written = {}  # key -> the number of this worker's last write of it
        self.acked = 0  # how many of those the gateway had committed, as of the last push
        self.added = 0  # bytes of text put since the cache was last measured
        self.touched = set()  # the keys pushed during the last round trip (ALL: a reset)
        self.poller = select.poll()
        self.poller.register(chan.sock, select.POLLIN)

    def write(self, key, text):
        """A plain store: cached, and sent behind the answers held so far or at once."""
        self.writes = n = self.writes + 1
        written = self.written
        written[key] = n
        if len(written) > CACHE_MAX_KEYS:
            old = next(iter(written))
            if written.pop(old) > self.acked:  # maybe still in flight: no push may apply to it
                self.values.pop(old, None)
        self.put(key, text)
        chan = self.chan
        # Behind held answers, or in a call whose answer will be held (a batch of short calls),
        # it goes out with them: one write, and one commit for the batch's stores.
        later = chan.outbox or chan.batching
        # JSON text inside JSON, as the `Q` store sends it: the gateway stores it unparsed.
        chan.queue_json(STATE_WRITE, {"key": key, "value": text})
        if not later:
            chan.flush()

    def cannot_grow(self, key, size):
        """Whether writing `size` bytes under `key` keeps the owner's state within what it takes
        now: the key holds a value here at least as long. Such a write passes any quota, so it
        may go without waiting for its answer."""
        text = self.values.get(key)
        if text is None:
            return False
        return size <= (len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass")))

    def get(self, key):
        """The cached JSON text of `key`, None if it is known absent, or MISS."""
        if key not in self.values:
            return MISS  # what has arrived could only drop it
        # Another call's write may have arrived since (this call may be polling the key).
        chan = self.chan
        if self.poller.poll(0):
            chan.receive_arrived()
        if chan.inbox:
            self.drain()
        return self.values.get(key, MISS)

    def drain(self):
        """Takes every whole frame of the inbox: pushes applied, calls kept for later."""
        chan = self.chan
        while chan.whole():
            kind, payload = chan.read()
            if kind == STATE_PUSH:
                self.push(payload)
            else:
                chan.deferred.append((kind, payload))

    def settle(self, key, text):
        """After a round trip for `key`: its value (None: absent) is cached, unless a push
        about it arrived during the wait (the push may be older or newer than the answer)."""
        touched = self.touched
        if touched and (key in touched or ALL in touched):
            self.values.pop(key, None)
        else:
            self.put(key, text)

    def forget(self, key):
        self.values.pop(key, None)

    def put(self, key, text):
        values = self.values
        if text is not None and len(text) > CACHE_VALUE_MAX:
            values.pop(key, None)
            return
        if key not in values and len(values) >= CACHE_MAX_KEYS:
            del values[next(iter(values))]  # the oldest entry
        values[key] = text
        if text is not None:
            # What was put since the last measure bounds what the cache holds: measured (and
            # the oldest entries dropped) only once that passes the budget.
            self.added += len(text)
            if self.added > CACHE_MAX_BYTES:
                self.shrink()

    def shrink(self):
        """Drops the oldest entries until the text left takes half the budget."""
        values = self.values
        total = sum(len(t) for t in values.values() if t is not None)
        while total > CACHE_MAX_BYTES // 2:
            text = values.pop(next(iter(values)))
            total -= len(text) if text is not None else 0
        self.added = total

    def push(self, payload):
        """An `N` frame: another worker's committed write, a key to forget, or a reset.
        Returns the key it was about (ALL for a reset)."""
        push = DECODER.decode(payload.decode())
        key = push.get("key", ALL)
        if key is ALL:
            if push.get("reset"):
                self.values.clear()
            return ALL
        if "value" not in push:
            self.values.pop(key, None)
            return key
        acked = push.get("acked", 0)
        if acked > self.acked:
            self.acked = acked
        # Only keys the cache holds, and not over a write of this worker still in flight
        # (it is newer: the gateway commits it after this one).
        if key in self.values and self.written.get(key, 0) <= acked:
            self.put(key, push["value"])
        return key
