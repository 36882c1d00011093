"""A worker: one function's module loaded in a process forked from the zygote, serving its
calls one at a time on its own socket (runner/PROTOCOL.md, worker channel)."""

import asyncio
import gc
import inspect
import io
import linecache
import math
import os
import resource
import signal
import socket
import sys
import time
import traceback
import types

from skython import StateUnavailable

from . import isolation, relay
from .codec import DECODER, Unencodable, decode, encode
from .protocol import (
    CALL, CALLER, ERROR, GO, HEADER, KINDS, LARGE_FRAME, LOAD_ERROR, LOG, OK, RAN, READY,
    STARTED, STATE_ANS, STATE_PUSH, STATE_REQ, Channel)
from .state_cache import StateCache

# Answers of short pipelined calls are held for one write at most this long (seconds).
HOLD_ANSWERS = 0.001
# One call in this many measures how long it held the worker (two getrusage calls).
SAMPLE_EVERY = 8
MODULE_NAME = "skython_function"
# Return values that are never awaitable, checked before the slower `inspect.isawaitable`.
_PLAIN = (int, float, str, list, dict, tuple, type(None))
# Frames of the runtime's own modules start with this (tracebacks leave them out).
_RUNTIME_DIR = os.path.dirname(__file__) + os.sep


class Capture(io.TextIOBase):
    """Collects one call's print() and stderr output, up to a limit that is stated, not silent."""

    def __init__(self, limit):
        self.limit = limit
        self.reset()

    def reset(self):
        self.parts, self.size, self.dropped = [], 0, 0

    def writable(self):
        return True

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        room = self.limit - self.size
        if len(s) <= room:
            self.parts.append(s)
            self.size += len(s)
        else:
            if room > 0:
                self.parts.append(s[:room])
                self.size += room
            self.dropped += len(s) - max(room, 0)
        return len(s)

    def take(self):
        text = "".join(self.parts)
        if self.dropped:
            text += f"\n[skython: output truncated, {self.dropped} more characters not kept]\n"
        self.reset()
        return text


class CpuLimitExceeded(Exception):
    pass


def _on_sigxcpu(_signum, _frame):
    raise CpuLimitExceeded("the call used more CPU time than the function's limit")


class Worker:
    def __init__(self, chan, spec):
        self.chan = chan
        self.spec = spec
        self.capture = Capture(int(spec.get("maxLogBytes", 64 * 1024)))
        self.max_result = int(spec.get("maxResultBytes", 10 << 20))
        self.cpu_seconds = spec.get("cpuSecondsPerCall")
        self.fn = None
        self.sig = None
        self.names = None  # (all names, required names) when a set check can replace bind()
        self.cpu_rearm_at = 0.0  # when RLIMIT_CPU must be moved again (time.monotonic())
        self.exhausted = False  # a call hit the CPU limit: stop after answering it
        self.recent_call = 0.0  # moving average of how long calls hold the worker (seconds)
        self.calls = 0
        self.cache = StateCache(chan) if spec.get("stateCache") else None
        # Who the running call is for (`skython.caller()`), as the last `I` said; None: anonymous.
        self.caller = None

    def _error(self, code, exc=None, message=None, **extra):
        err = {"code": code}
        if exc is not None:
            err["type"] = type(exc).__name__
            err["message"] = message if message is not None else str(exc)
            tb = exc.__traceback__
            # Drop the runtime's own frames (of any of its modules) so the owner sees only their code.
            while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_RUNTIME_DIR):
                tb = tb.tb_next
            err["traceback"] = "".join(traceback.format_exception(type(exc), exc, tb))
        else:
            err["message"] = message
        err.update(extra)
        return err

    def load(self):
        spec = self.spec
        source, filename = spec["source"], spec["filename"]
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        module = types.ModuleType(MODULE_NAME)
        module.__file__ = filename
        sys.modules[MODULE_NAME] = module
        started = time.perf_counter()
        sys.stdout = sys.stderr = self.capture
        try:
            exec(compile(source, filename, "exec", dont_inherit=True), module.__dict__)
            fn = module.__dict__.get(spec["entrypoint"])
            if not callable(fn):
                raise LookupError(f"{spec['entrypoint']!r} is not a callable defined by the source")
        except BaseException as e:  # noqa: BLE001 - user code may raise anything, even SystemExit
            err = self._error("load_error", e,
                              message=f"loading the function failed: {type(e).__name__}: {e}")
            err["logs"] = self.capture.take()
            self.chan.send_json(LOAD_ERROR, err)
            return False
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        self.fn = fn
        try:
            self.sig = inspect.signature(fn)
        except (TypeError, ValueError):
            self.sig = None
        else:
            params = self.sig.parameters.values()
            if all(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params):
                self.names = (frozenset(p.name for p in params),
                              frozenset(p.name for p in params if p.default is p.empty))
        self.chan.send_json(READY, {"pid": os.getpid(),
                                    "loadMs": (time.perf_counter() - started) * 1000,
                                    "logs": self.capture.take()})
        return True

    def describe(self):
        name = self.spec["entrypoint"]
        return f"{name}{self.sig}" if self.sig is not None else f"{name}(...)"

    def expected(self):
        if self.sig is None:
            return []
        out = []
        for p in self.sig.parameters.values():
            item = {"name": p.name, "kind": p.kind.name.lower()}
            if p.annotation is not p.empty:
                item["annotation"] = inspect.formatannotation(p.annotation)
            if p.default is not p.empty:
                item["default"] = repr(p.default)
            out.append(item)
        return out

    def call(self, payload):
        try:
            # The gateway has checked the body is JSON (UTF-8, object or array, bounded depth).
            text = payload.decode("utf-8")
            try:
                args = decode(text)
            except ValueError:
                if text.strip():
                    raise
                args = {}  # an empty body: no arguments
        except (ValueError, RecursionError) as e:
            return ERROR, self._error("bad_json", message=f"the request body is not valid JSON: {e}")
        if isinstance(args, dict):
            pos, kw = (), args
        elif isinstance(args, list):
            pos, kw = args, {}
        else:
            return ERROR, self._error(
                "bad_arguments",
                message=f"the request body must be a JSON object (keyword arguments) or array"
                        f" (positional arguments), got {type(args).__name__}; expected"
                        f" {self.describe()}", expected=self.expected())
        # Keyword arguments of a plain signature: two set comparisons instead of bind(), which
        # also makes the error message when they do not fit.
        fits = not pos and self.names is not None and self.names[1] <= kw.keys() <= self.names[0]
        if self.sig is not None and not fits:
            try:
                self.sig.bind(*pos, **kw)
            except TypeError as e:
                return ERROR, self._error(
                    "bad_arguments", message=f"{e}; expected {self.describe()}",
                    expected=self.expected())
        if self.cpu_seconds and time.monotonic() >= self.cpu_rearm_at:
            # RLIMIT_CPU counts the process's whole life: each call needs the limit moved to
            # "now + cpu_seconds". Reading the CPU time is a system call, so the limit is set
            # with half a second of slack and moved at most every half second of wall-clock
            # time: a call still gets its cpu_seconds unless the calls of the last half second
            # used more than half a second of CPU (in threads). The gateway's wall-clock
            # timeout is the limit that counts.
            used = resource.getrusage(resource.RUSAGE_SELF)
            limit = math.ceil(used.ru_utime + used.ru_stime + self.cpu_seconds + 0.5)
            resource.setrlimit(resource.RLIMIT_CPU, (limit, resource.RLIM_INFINITY))
            self.cpu_rearm_at = time.monotonic() + 0.5
        sys.stdout = sys.stderr = self.capture
        try:
            result = self.fn(*pos, **kw)
            if not isinstance(result, _PLAIN) and inspect.isawaitable(result):
                result = asyncio.run(_await(result))
            body = encode(result)
        except Unencodable as e:
            return ERROR, self._error("unserializable_result", message=str(e))
        except BaseException as e:  # noqa: BLE001
            # Threads the call started may still be burning CPU: this worker ends after answering.
            self.exhausted = isinstance(e, CpuLimitExceeded)
            if isinstance(e, StateUnavailable):
                # Not the function's fault, and worth retrying: the gateway answers 503.
                err = self._error("state_unavailable", e, message=(
                    f"the call could not use its state: {e or 'the storage is unavailable'};"
                    " try again later"))
            else:
                err = self._error("function_error", e, retire=self.exhausted)
            sys.__stderr__.flush()
            self.capture.write(err["traceback"])
            return ERROR, err
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        if len(body) > self.max_result:
            return ERROR, self._error(
                "result_too_large",
                message=f"the return value encodes to {len(body)} bytes of JSON, more than the"
                        f" limit of {self.max_result} bytes")
        return OK, body

    def serve(self):
        chan, capture = self.chan, self.capture
        sock, inbox, deferred = chan.sock, chan.inbox, chan.deferred
        while True:
            if inbox or deferred:
                if not chan.ready():
                    chan.flush()  # nothing else to run: answer before waiting
                try:
                    kind, payload = chan.recv()
                except (EOFError, OSError):
                    return
                chan.batching = self.recent_call < HOLD_ANSWERS / 10 and chan.ready()
            else:
                # Nothing buffered: the usual case at low concurrency, where a call's latency is
                # all there is. The next call most often arrives alone, as one whole frame, and
                # is taken as it came, without the channel's buffering; its answer (below) is
                # sent the same way. A few µs of Python per call, on caches the gateway has just
                # used, are a good part of a call's round trip.
                if chan.outbox:
                    chan.flush()
                chan.batching = False
                try:
                    data = sock.recv(LARGE_FRAME)
                except OSError:
                    return
                if not data:
                    return
                if len(data) < HEADER.size or HEADER.size + HEADER.unpack_from(data)[0] != len(data):
                    inbox += data  # several frames, or part of one: the channel sorts them out
                    continue
                kind, payload = KINDS[data[4]], data[HEADER.size:]
            if kind != CALL:
                if kind == CALLER:
                    self.caller = DECODER.decode(payload.decode())
                elif kind == STATE_PUSH and self.cache is not None:
                    self.cache.push(payload)
                continue
            # Every few calls, how long the call held this worker: its CPU time, or its wall
            # time if it blocked (I/O, sleep, a state request). Not the wall time alone: on a
            # busy CPU that also counts the time others ran, and would make short calls look
            # long just when batching them matters most. The gateway queues calls on a busy
            # worker only for functions whose calls are short (`U`).
            # Not the first call: it pays the fork's copy-on-write faults, which later calls do
            # not, and would make a short function look slow (and unqueueable) for a while.
            self.calls += 1
            sample = self.calls % SAMPLE_EVERY == 2
            if sample:
                before = resource.getrusage(resource.RUSAGE_THREAD)
                started = time.perf_counter()
            out_kind, out = self.call(payload)
            if sample:
                wall = time.perf_counter() - started
                after = resource.getrusage(resource.RUSAGE_THREAD)
                held = wall if after.ru_nvcsw > before.ru_nvcsw else (
                    after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
                self.recent_call += (held - self.recent_call) / 4
            logs = capture.take() if capture.parts or capture.dropped else ""
            if (out_kind == OK and not (sample or logs or chan.outbox or inbox or deferred)
                    and len(out) < LARGE_FRAME):
                try:
                    sock.sendall(HEADER.pack(len(out), OK[0]) + out)  # alone, as it came
                except OSError:
                    return
                continue
            if logs:
                chan.queue(LOG, logs.encode("utf-8", "replace"))
            if sample:
                chan.queue(RAN, b"%d" % (held * 1e6))
            if out_kind == OK:
                chan.queue(OK, out)
            else:
                chan.queue_json(ERROR, out)
            if self.exhausted:
                chan.flush()
                return
            # More calls are waiting: if calls are short, their answers go out together. A held
            # answer waits for the next call to end, so a rare long call would hold it back:
            # only functions whose calls average well under the hold time hold answers.
            if (self.recent_call >= HOLD_ANSWERS / 10
                    or time.monotonic() - chan.held_since >= HOLD_ANSWERS):
                chan.flush()

    def state(self, op, **fields):
        """A store/load/delete/keys request answered by the gateway, scoped to this function."""
        fields["op"] = op
        chan, cache = self.chan, self.cache
        chan.send_json(STATE_REQ, fields)  # after the answers held so far
        if cache is not None:
            cache.touched.clear()
        while True:
            kind, payload = chan.read()
            if kind == STATE_ANS:
                return DECODER.decode(payload.decode())
            if kind == STATE_PUSH and cache is not None:
                cache.touched.add(cache.push(payload))  # `settle` sees what the wait brought
            elif kind == CALL or kind == CALLER:
                # A pipelined call (and who it is for): it runs after this one.
                chan.deferred.append((kind, payload))
            else:
                raise RuntimeError(f"unexpected frame {kind!r} while waiting for a state answer")


async def _await(awaitable):
    return await awaitable


def _apply_limits(spec):
    mem = spec.get("memoryBytes")
    if mem:
        # Address space counts what the zygote already mapped (shared, copy-on-write), so the
        # limit is the function's budget on top of that.
        limit = mapped_bytes() + int(mem)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if spec.get("cpuSecondsPerCall"):
        signal.signal(signal.SIGXCPU, _on_sigxcpu)
    # Backstops whatever the function does; the sandbox adds namespaces, seccomp and cgroups.
    lower_limit(resource.RLIMIT_NOFILE, 1024)
    lower_limit(resource.RLIMIT_FSIZE, 256 << 20)
    # Processes and threads of the sandbox's uid in all; only set when that uid is the
    # sandbox's own (it counts every process of the uid).
    procs = int(os.environ.get("SKYTHON_MAX_PROCS", "0") or 0)
    if procs:
        lower_limit(resource.RLIMIT_NPROC, procs)


def mapped_bytes():
    """This process's address space (VmSize), which a forked child shares copy-on-write."""
    with open("/proc/self/status") as f:
        return next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:")), 0)


def lower_limit(which, value):
    """Sets a resource limit (soft and hard) to `value`, or leaves it lower where it was."""
    soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def worker_main(fd, spec):
    isolation.null_stdio()
    os.setsid()  # its own process group, so the gateway can kill it with everything it started
    isolation.die_with_parent()
    for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()  # forked children would otherwise share one stream
    chan = Channel(socket.socket(fileno=fd))
    # First, before any user code: the gateway learns this process's pid from the kernel.
    chan.send_json(STARTED, {"pid": os.getpid()})
    # The gateway places this process (its cgroup) before any user code may fork.
    kind, _ = chan.recv()
    if kind != GO:
        return
    try:
        isolation.separate_from_siblings()
        if relay.wanted(spec.get("env")):
            relay.start(keep_open=chan.sock)
        isolation.drop_privileges()
        isolation.isolate_from_siblings()
    except Exception as e:  # noqa: BLE001 - stderr is /dev/null: the gateway hears it here
        chan.send_json(LOAD_ERROR, {
            "code": "load_error",
            "message": f"the sandbox could not isolate the worker, so it runs nothing: {e}"})
        return
    os.environ.update(spec.get("env") or {})
    _apply_limits(spec)
    gc.enable()
    worker = Worker(chan, spec)
    import skython
    skython._worker = worker
    if worker.load():
        worker.serve()
