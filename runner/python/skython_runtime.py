"""Skython's Python side: the zygote and the workers it forks.

The gateway starts this module once per runtime profile (`python -m skython_runtime`) with a Unix
socket on fd 3. The zygote imports the runtime libraries and does their first-use work once, then
forks a worker per request; a worker loads one function's source and serves calls on its own
socket until the gateway closes it. The wire format is described in runner/PROTOCOL.md.
"""

import array
import ast
import asyncio
import base64
import collections
import dataclasses
import datetime
import decimal
import enum
import fractions
import functools
import gc
import inspect
import io
import json
import linecache
import math
import os
import pathlib
import resource
import signal
import socket
import struct
import sys
import time
import traceback
import types
import uuid

HEADER = struct.Struct("<IB")
LARGE_FRAME = 64 * 1024
KINDS = tuple(bytes([i]) for i in range(256))
# Answers of short pipelined calls are held for one write at most this long (seconds).
HOLD_ANSWERS = 0.001
# One call in this many measures how long it held the worker (two getrusage calls).
SAMPLE_EVERY = 8

# Control channel (gateway <-> zygote).
HELLO, SPAWN, SPAWNED, SPAWN_FAILED, INSPECT = b"H", b"S", b"P", b"E", b"I"
# Worker channel (gateway <-> worker).
STARTED, GO, READY, LOAD_ERROR, CALL, STATE_REQ, STATE_ANS, LOG, RAN, OK, ERROR = (
    b"T", b"W", b"R", b"L", b"C", b"Q", b"A", b"G", b"U", b"O", b"X")

DEFAULT_PRELOAD = "numpy,pandas,scipy,requests,bs4"
MODULE_NAME = "skython_function"


class Channel:
    """Length-framed messages on a stream socket: u32 LE payload length, u8 kind, payload.

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
        self.queue(kind, "".join(_ENCODE(obj, 0)).encode())

    def send_json(self, kind, obj):
        self.queue_json(kind, obj)
        self.flush()

    def ready(self):
        """Whether a whole frame has already arrived (another call is waiting)."""
        inbox = self.inbox
        return bool(self.deferred) or (
            len(inbox) >= HEADER.size and len(inbox) >= HEADER.size + HEADER.unpack_from(inbox)[0])

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


# ---------------------------------------------------------------- JSON encoding of return values

class Unencodable(Exception):
    pass


def _is_nan_like(o):
    try:
        return o is None or (isinstance(o, float) and math.isnan(o)) or bool(o != o)
    except Exception:
        return False


def to_json_compatible(o):
    """One conversion step for a value `json` cannot encode itself; raises TypeError otherwise."""
    mod = type(o).__module__ or ""
    if mod.startswith("numpy"):
        if hasattr(o, "tolist"):  # ndarray and numpy scalars
            return o.tolist()
    if mod.startswith("pandas"):
        name = type(o).__name__
        if name == "DataFrame":
            return o.to_dict(orient="records")
        if name == "Series":
            if type(o.index).__name__ == "RangeIndex" and o.index.start == 0 and o.index.step == 1:
                return o.tolist()
            return {str(k) if not isinstance(k, (str, int, float, bool)) else k: v
                    for k, v in o.items()}
        if name in ("NaTType", "NAType"):
            return None
        if name == "Timedelta":
            return o.total_seconds()
        if hasattr(o, "tolist"):  # Index, Categorical, arrays
            return o.tolist()
    if isinstance(o, (datetime.datetime, datetime.date, datetime.time)):
        return o.isoformat()
    if isinstance(o, datetime.timedelta):
        return o.total_seconds()
    if isinstance(o, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(o)).decode("ascii")
    if isinstance(o, (set, frozenset)):
        try:
            return sorted(o)
        except TypeError:
            return list(o)
    if isinstance(o, (decimal.Decimal, fractions.Fraction)):
        return float(o)
    if isinstance(o, uuid.UUID):
        return str(o)
    if isinstance(o, pathlib.PurePath):
        return str(o)
    if isinstance(o, enum.Enum):
        return o.value
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}
    if isinstance(o, (range, type({}.keys()), type({}.values()))):
        return list(o)
    if callable(getattr(o, "model_dump", None)):  # pydantic v2 models
        return o.model_dump()
    raise TypeError(type(o).__name__)


def _sanitize(o, depth=0):
    """The slow path: NaN/inf become null, odd dict keys become strings."""
    if depth > 200:
        raise Unencodable("the return value is nested more than 200 levels deep (or is circular)")
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if o is None or isinstance(o, (str, int, bool)):
        return o
    if isinstance(o, dict):
        out = {}
        for k, v in o.items():
            if not (k is None or isinstance(k, (str, int, float, bool))):
                try:
                    k = to_json_compatible(k)
                except TypeError:
                    pass
                if not (k is None or isinstance(k, (str, int, float, bool))):
                    k = str(k)
            out[k] = _sanitize(v, depth + 1)
        return out
    if isinstance(o, (list, tuple)):
        return [_sanitize(v, depth + 1) for v in o]
    if _is_nan_like(o) and type(o).__module__.startswith(("pandas", "numpy")):
        return None
    try:
        return _sanitize(to_json_compatible(o), depth + 1)
    except TypeError:
        raise Unencodable(
            f"the return value contains a {type(o).__module__}.{type(o).__qualname__}, which cannot"
            " be encoded as JSON; return dicts, lists, strings, numbers, booleans or None (numpy,"
            " pandas, datetime, bytes, sets and dataclasses are converted automatically)") from None


# Built once, and the C parts themselves: `json.dumps` with options builds an encoder per call,
# `JSONEncoder.encode` builds a C encoder per call, `json.loads(bytes)` sniffs the encoding and
# `JSONDecoder.decode` runs two regular expressions around the scan; on the warm path these were
# most of a call's Python time. Without the encoder's circular reference check (markers=None) a
# cycle is a RecursionError, which `encode` reports.
_ENCODE = json.encoder.c_make_encoder(
    None, to_json_compatible, json.encoder.encode_basestring, None, ":", ",", False, False, False)
_DECODER = json.JSONDecoder()
_SCAN = _DECODER.scan_once
# Return values that are never awaitable, checked before the slower `inspect.isawaitable`.
_PLAIN = (int, float, str, list, dict, tuple, type(None))


def encode(value):
    """JSON bytes for a return value or state value; raises Unencodable with a clear message."""
    try:
        s = "".join(_ENCODE(value, 0))
    except (TypeError, ValueError, RecursionError):
        try:
            s = json.dumps(_sanitize(value), allow_nan=False, ensure_ascii=False,
                           separators=(",", ":"))
        except RecursionError:
            raise Unencodable("the return value is nested too deeply (or is circular)") from None
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates cannot be UTF-8: they become U+FFFD rather than invalid bytes.
        return s.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


# ---------------------------------------------------------------- inspecting a source (deploy time)

def _params_from_ast(fn):
    a = fn.args
    out = []

    def add(arg, kind, default=None):
        out.append({k: v for k, v in {
            "name": arg.arg, "kind": kind,
            "annotation": ast.unparse(arg.annotation) if arg.annotation else None,
            "default": ast.unparse(default) if default is not None else None,
        }.items() if v is not None})

    positional = a.posonlyargs + a.args
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    for i, arg in enumerate(positional):
        add(arg, "positional_only" if i < len(a.posonlyargs) else "positional_or_keyword",
            defaults[i])
    if a.vararg:
        add(a.vararg, "var_positional")
    for arg, d in zip(a.kwonlyargs, a.kw_defaults):
        add(arg, "keyword_only", d)
    if a.kwarg:
        add(a.kwarg, "var_keyword")
    return out


def inspect_source(source, filename, entrypoint=None):
    """Syntax check and entry-point resolution, without running the source."""
    try:
        tree = ast.parse(source, filename)
        compile(tree, filename, "exec", dont_inherit=True)
    except SyntaxError as e:
        line, col = e.lineno or 0, e.offset or 0
        return {"ok": False, "error": {
            "code": "syntax_error",
            "message": f"{type(e).__name__}: {e.msg} (line {line}, column {col})",
            "line": line, "column": col, "text": (e.text or "").rstrip("\n")}}
    except ValueError as e:  # e.g. null bytes
        return {"ok": False, "error": {"code": "syntax_error", "message": str(e)}}
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    public = [n for n in defs if not n.startswith("_")]
    if entrypoint:
        if entrypoint not in defs:
            bound = any(isinstance(n, (ast.Assign, ast.Import, ast.ImportFrom, ast.ClassDef))
                        and entrypoint in _bound_names(n) for n in tree.body)
            if not bound:
                return {"ok": False, "error": {
                    "code": "entrypoint_not_found",
                    "message": f"entrypoint {entrypoint!r} is not defined at the top level of the"
                               f" source; top-level functions: {', '.join(defs) or 'none'}",
                    "candidates": list(defs)}}
            return {"ok": True, "signature": {"entrypoint": entrypoint, "params": []}}
        name = entrypoint
    elif "main" in defs:
        name = "main"
    elif len(public) == 1:
        name = public[0]
    elif not public:
        return {"ok": False, "error": {
            "code": "no_entrypoint",
            "message": "the source defines no public top-level function; define one (for example"
                       " `def main(...)`) or set `entrypoint`",
            "candidates": []}}
    else:
        return {"ok": False, "error": {
            "code": "ambiguous_entrypoint",
            "message": f"the source defines several public functions ({', '.join(public)}) and no"
                       " `main`; set `entrypoint` to the one to call, or prefix helpers with `_`",
            "candidates": public}}
    fn = defs[name]
    sig = {"entrypoint": name, "params": _params_from_ast(fn)}
    if fn.returns is not None:
        sig["returns"] = ast.unparse(fn.returns)
    doc = ast.get_docstring(fn)
    if doc:
        sig["doc"] = doc
    return {"ok": True, "signature": sig}


def _bound_names(node):
    if isinstance(node, ast.ClassDef):
        return {node.name}
    if isinstance(node, ast.Assign):
        return {t.id for t in node.targets if isinstance(t, ast.Name)}
    return {(a.asname or a.name).split(".")[0] for a in node.names}


# ---------------------------------------------------------------- the worker

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

    def _error(self, code, exc=None, message=None, **extra):
        err = {"code": code}
        if exc is not None:
            err["type"] = type(exc).__name__
            err["message"] = message if message is not None else str(exc)
            tb = exc.__traceback__
            # Drop the runtime's own frames so the owner sees only their code.
            while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
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
                args, end = _SCAN(text, 0)
            except StopIteration:  # leading whitespace, or not JSON: decode() says which
                end = -1
            if end != len(text):
                args = _DECODER.decode(text) if text.strip() else {}
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
            else:
                # Nothing buffered: the usual case at low concurrency, where a call's latency is
                # all there is. The next call most often arrives alone, as one whole frame, and
                # is taken as it came, without the channel's buffering; its answer (below) is
                # sent the same way. A few µs of Python per call, on caches the gateway has just
                # used, are a good part of a call's round trip.
                if chan.outbox:
                    chan.flush()
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
        chan = self.chan
        chan.send_json(STATE_REQ, fields)  # after the answers held so far
        while True:
            kind, payload = chan.read()
            if kind == STATE_ANS:
                return _DECODER.decode(payload.decode())
            if kind != CALL:
                raise RuntimeError(f"unexpected frame {kind!r} while waiting for a state answer")
            chan.deferred.append((kind, payload))  # a pipelined call: it runs after this one


async def _await(awaitable):
    return await awaitable


def _apply_limits(spec):
    mem = spec.get("memoryBytes")
    if mem:
        # Address space counts what the zygote already mapped (shared, copy-on-write), so the
        # limit is the function's budget on top of that.
        with open("/proc/self/status") as f:
            vm = next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:")), 0)
        limit = vm + int(mem)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if spec.get("cpuSecondsPerCall"):
        signal.signal(signal.SIGXCPU, _on_sigxcpu)
    # Backstops whatever the function does; the sandbox adds namespaces, seccomp and cgroups.
    _lower_limit(resource.RLIMIT_NOFILE, 1024)
    _lower_limit(resource.RLIMIT_FSIZE, 256 << 20)
    # Processes and threads of the sandbox's uid in all; only set when that uid is the
    # sandbox's own (it counts every process of the uid).
    procs = int(os.environ.get("SKYTHON_MAX_PROCS", "0") or 0)
    if procs:
        _lower_limit(resource.RLIMIT_NPROC, procs)


def _lower_limit(which, value):
    soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


# The workers' seccomp program (raw `struct sock_filter`s), read once by a sandboxed zygote.
_WORKER_FILTER = None


@functools.cache  # loaded once in the zygote; forked workers inherit it
def _libc():
    """ctypes, the C library, and `call(name, *args, what=...)`, which raises OSError on failure."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)

    def call(fn, *args, what):
        if getattr(libc, fn)(*args) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"sandbox: {what}: {os.strerror(err)}")
    return ctypes, libc, call


def _separate_from_siblings():
    """Workers of every function share their runtime's zygote and sandbox. Before any user code,
    a worker makes itself a private `/tmp` in a mount namespace of its own, gives up the
    capabilities the zygote kept for that, and installs the workers' seccomp filter (see
    runner/src/sandbox.rs). Outside a sandbox (no filter) there is nothing to separate from."""
    if _WORKER_FILTER is None:
        return
    ctypes, libc, call = _libc()
    ul = ctypes.c_ulong
    clone_newns, ms_nosuid, ms_nodev, ms_rec, ms_private = 0x20000, 2, 4, 1 << 14, 1 << 18
    call("unshare", ctypes.c_int(clone_newns), what="unshare(CLONE_NEWNS)")
    call("mount", b"none", b"/", None, ul(ms_rec | ms_private), None, what="making mounts private")
    size = int(os.environ.get("SKYTHON_WORKER_TMP_BYTES") or 64 << 20)
    call("mount", b"tmpfs", b"/tmp", b"tmpfs", ul(ms_nosuid | ms_nodev),
         f"size={size},mode=1777".encode(), what="mounting a private /tmp")
    os.chdir("/tmp")
    _drop_privileges()


def _drop_privileges():
    """Gives up the capabilities a sandboxed zygote keeps, for good (no_new_privs: no exec can
    bring them back), and adds the workers' seccomp filter."""
    if _WORKER_FILTER is None:
        return
    ctypes, libc, call = _libc()
    ul = ctypes.c_ulong
    pr_cap_ambient, pr_cap_ambient_clear_all = 47, 4
    call("prctl", ctypes.c_int(pr_cap_ambient), ul(pr_cap_ambient_clear_all), ul(0), ul(0), ul(0),
         what="clearing ambient capabilities")
    header = ctypes.create_string_buffer(struct.pack("=Ii", 0x20080522, 0))  # version 3, self
    call("capset", header, ctypes.create_string_buffer(24), what="dropping capabilities")
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    call("prctl", ctypes.c_int(pr_set_no_new_privs), ul(1), ul(0), ul(0), ul(0),
         what="setting no_new_privs")

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    program = ctypes.create_string_buffer(_WORKER_FILTER, len(_WORKER_FILTER))
    fprog = SockFprog(len(_WORKER_FILTER) // 8, ctypes.cast(program, ctypes.c_void_p))
    call("prctl", ctypes.c_int(pr_set_seccomp), ul(seccomp_mode_filter), ctypes.byref(fprog),
         ul(0), ul(0), what="installing the seccomp filter")


def _isolate_from_siblings():
    """No reading other workers' memory or /proc files (not dumpable), no signals to other
    processes and no connecting to their abstract sockets (a Landlock domain of this worker's
    own, Linux 6.12+; skipped on older kernels and outside a sandbox, where no_new_privs is
    not set). The Landlock domain also keeps the worker from ptrace-class access (such as
    /proc/<pid>/mem) to anything outside it, the zygote included."""
    ctypes, libc, _ = _libc()
    libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 0
    sys_create_ruleset, sys_restrict_self = 444, 446  # the same on every architecture
    abi = libc.syscall(sys_create_ruleset, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 6:
        return
    scope_abstract_unix_socket, scope_signal = 1 << 0, 1 << 1
    attr = ctypes.create_string_buffer(struct.pack("=QQQ", 0, 0, scope_abstract_unix_socket | scope_signal))
    fd = libc.syscall(sys_create_ruleset, attr, ctypes.c_size_t(24), ctypes.c_uint32(0))
    if fd < 0:
        return
    libc.syscall(sys_restrict_self, ctypes.c_int(fd), ctypes.c_uint32(0))
    os.close(fd)


def _die_with_parent():
    try:
        _libc()[1].prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort: the worker also exits on EOF
        pass


def worker_main(fd, spec):
    os.setsid()  # its own process group, so the gateway can kill it with everything it started
    _die_with_parent()
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
    _separate_from_siblings()
    _isolate_from_siblings()
    os.environ.update(spec.get("env") or {})
    _apply_limits(spec)
    gc.enable()
    worker = Worker(chan, spec)
    import skython
    skython._worker = worker
    if worker.load():
        worker.serve()


# ---------------------------------------------------------------- the zygote

def _preload():
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


def _start_egress_relay(socket_path, addr):
    """Inside a sandbox (no network): relays 127.0.0.1:3128 to the gateway's egress proxy, a
    Unix socket. The proxy decides; workers without their function's token are refused."""
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
        _die_with_parent()
        _drop_privileges()
        import threading

        def pump(src, dst):
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

        def relay(conn):
            with conn:
                try:
                    up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    up.connect(socket_path)
                except OSError:
                    return
                with up:
                    back = threading.Thread(target=pump, args=(up, conn), daemon=True)
                    back.start()
                    pump(conn, up)
                    back.join()

        while True:
            conn, _ = listener.accept()
            threading.Thread(target=relay, args=(conn,), daemon=True).start()
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def _read_worker_filter():
    fd = os.environ.pop("SKYTHON_WORKER_SECCOMP_FD", None)
    if fd is None:
        return None
    with open(int(fd), "rb") as f:
        program = f.read()
    if not program or len(program) % 8:
        raise SystemExit(f"skython: the workers' seccomp program is {len(program)} bytes")
    return program


def zygote_main():
    global _WORKER_FILTER
    _WORKER_FILTER = _read_worker_filter()
    if _WORKER_FILTER is not None:
        # Workers run as the same uid: keep them out of the zygote's memory and /proc files even
        # where Landlock is too old to (_isolate_from_siblings).
        _libc()[1].prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 0
    # Nothing but the control socket is inherited (the zygote's seccomp descriptors are read
    # by bubblewrap already).
    os.closerange(4, os.sysconf("SC_OPEN_MAX"))
    if os.environ.get("SKYTHON_EGRESS_SOCKET"):
        _start_egress_relay(os.environ["SKYTHON_EGRESS_SOCKET"], os.environ["SKYTHON_EGRESS_RELAY"])
    ctl = socket.socket(fileno=3)
    started = time.perf_counter()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    _die_with_parent()
    loaded, missing = _preload()
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


if __name__ == "__main__":
    zygote_main()
