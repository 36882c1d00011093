#!/usr/bin/env python3
"""Skython against the "current way" (FastAPI + uvicorn, Flask + gunicorn) and against two floors
(an in-process loop, and an HTTP responder that does nothing), side by side in one run on this
machine.

`make bench` runs everything and writes bench/results/latest.md and latest.png; `make bench-quick`
runs only the warm `add` comparison at concurrency 64 and ends with one summary line.

Fairness: every server under test (with all its processes: Skython's gateway, zygote and workers;
gunicorn's arbiter and workers) is pinned to the same single CPU, and the load generator (wrk) to
another, so each contender gets the same CPU budget. Contenders alternate within each round (the
order rotates between rounds), every measurement is preceded by a discarded warm-up, and figures
are medians over rounds, reported with their min and max.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
APPS = HERE / "apps"
FUNCTIONS_SOURCE = (APPS / "functions.py").read_text()
BODIES = {
    "add": json.dumps({"a": 2, "b": 3}),
    "norm": json.dumps({"xs": [float(i) for i in range(100)]}),
}
TOKEN = "sky_bench_" + os.urandom(8).hex()


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


class Progress:
    """One status line on the terminal: step n of total, what runs now, time left."""

    def __init__(self, total):
        self.total, self.done, self.started = total, 0, time.monotonic()

    def step(self, what):
        self.done += 1
        elapsed = time.monotonic() - self.started
        left = elapsed / max(self.done - 1, 1) * (self.total - self.done + 1) if self.done > 1 else 0
        line = f"[{self.done}/{self.total}] {what}  (~{left:.0f}s left)"
        if sys.stderr.isatty():
            print("\r\033[K" + line, end="", file=sys.stderr, flush=True)
        else:
            log(line)

    def finish(self):
        if sys.stderr.isatty():
            print(file=sys.stderr)


# ------------------------------------------------------------------ CPU budget

def cpu_plan():
    """(server CPUs, load-generator CPUs) as taskset lists, or None when there is one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return str(cpus[0]), ",".join(map(str, cpus[1:]))


CPUS = cpu_plan()
ALL_CPUS = ",".join(map(str, sorted(os.sched_getaffinity(0))))
# The budget in force: "pinned" (one CPU per server, wrk on the others) or "machine" (every
# server and wrk share all CPUs: what a server can make of the whole machine).
BUDGET = {"mode": "pinned"}


def pinned(cmd, role):
    if CPUS is None or BUDGET["mode"] == "machine":
        return cmd
    return ["taskset", "-c", CPUS[0] if role == "server" else CPUS[1], *cmd]


def set_budget(servers, mode):
    """Moves every process and thread of the running servers to the budget's CPUs."""
    BUDGET["mode"] = mode
    if CPUS is None:
        return
    cpus = ALL_CPUS if mode == "machine" else CPUS[0]
    for s in servers:
        for p in s.pids():
            subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(p)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)


# ------------------------------------------------------------------ servers

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, token=None, timeout=60):
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Server:
    """A contender's server process group, pinned to the server CPU, stopped as a whole."""

    def __init__(self, name, cmd, port, paths, env=None, cwd=None, logfile=None):
        self.name, self.port, self.paths = name, port, paths
        self.data = None  # a data directory to remove at stop
        self.store = None  # Skython's: "sqlite" or "mongodb"
        self.log = logfile or tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(pinned(cmd, "server"), env=env, cwd=cwd, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def url(self, function):
        return f"http://127.0.0.1:{self.port}{self.paths[function]}"

    def log_tail(self, lines=20):
        self.log.flush()
        return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, probe_path, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status, _ = http("GET", f"http://127.0.0.1:{self.port}{probe_path}", timeout=2)
                if status < 500:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"{self.name} did not answer within {timeout}s:\n{self.log_tail()}")

    def pids(self):
        """The server's processes: its process group and every descendant."""
        children = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(d.name))
        out, todo = [], [self.proc.pid]
        while todo:
            p = todo.pop()
            out.append(p)
            todo.extend(children.get(p, []))
        return out

    def pss_mib(self):
        """Proportional set size of the whole tree: shared (copy-on-write) pages counted once."""
        total = 0
        for p in self.pids():
            try:
                for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total / 1024

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)
        if self.data:
            shutil.rmtree(self.data, ignore_errors=True)


def start_skython(args, name="skython", preload=None, binary=None, functions=BODIES, store=None):
    """`skython up` on a fresh data directory with `functions` deployed; `store`: a store URL
    for `--store` (default: the embedded SQLite in the data directory)."""
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    cmd = [binary or args.skython, "up", "--addr", f"127.0.0.1:{port}", "--data-dir", str(data),
           "--python", args.runtime_python, "--admin-token", TOKEN, "--log", "warn"]
    if preload is not None:
        cmd += ["--preload", preload]
    if store is not None:
        cmd += ["--store", store]
    s = Server(name, cmd, port, {f: f"/fn/admin/{f}" for f in BODIES})
    s.data = data
    s.store = "mongodb" if store and store.startswith("mongodb") else "sqlite"
    s.wait_ready("/readyz")
    for f in functions:
        if store is not None:
            # A store of its own keeps what an earlier run deployed there.
            http("DELETE", f"http://127.0.0.1:{port}/api/v1/functions/admin/{f}", token=TOKEN)
        deploy(s, f, FUNCTIONS_SOURCE, entrypoint=f)
    return s


def deploy(s, endpoint, source, **spec):
    # Called by load generators without a key, like FastAPI's and Flask's endpoints: public
    # (which older builds, the A/B baselines, understand as well).
    body = json.dumps({"endpoint": endpoint, "source": source, "visibility": "public", **spec})
    status, answer = http("POST", f"http://127.0.0.1:{s.port}/api/v1/functions", body, token=TOKEN)
    if status not in (200, 201):
        raise SystemExit(f"deploying {endpoint}: {status} {answer[:500]!r}")


def start_fastapi(args, plain=False):
    """uvicorn[standard] (uvloop, httptools) as FastAPI recommends; `plain`: what a bare
    `pip install uvicorn` runs (asyncio, h11)."""
    port = free_port()
    cmd = [args.bench_python, "-m", "uvicorn", "fastapi_app:app", "--app-dir", str(APPS),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--no-access-log",
           "--log-level", "warning"]
    if plain:
        cmd += ["--loop", "asyncio", "--http", "h11"]
    s = Server("fastapi-h11" if plain else "fastapi", cmd, port, {f: f"/{f}" for f in BODIES})
    s.wait_ready("/docs")
    return s


def start_http_floor(args):
    """The transport floor: a do-nothing HTTP/1.1 responder (bench/http-floor), the least any
    server pays on this machine for loopback TCP and its wake-ups."""
    port = free_port()
    s = Server("http-floor", [args.http_floor, "--addr", f"127.0.0.1:{port}"], port,
               {f: "/" for f in BODIES})
    s.wait_ready("/")
    return s


def start_flask(args, workers):
    port = free_port()
    cmd = [args.bench_python, "-m", "gunicorn", "--chdir", str(APPS), "-w", str(workers), "-k", "sync",
           "-b", f"127.0.0.1:{port}", "--log-level", "warning", "flask_app:app"]
    s = Server(f"flask-{workers}w", cmd, port, {f: f"/{f}" for f in BODIES})
    s.wait_ready("/")
    return s


# ------------------------------------------------------------------ load

def wrk(url, body, conns, seconds):
    """One wrk run: requests/s, p50 and p99 in ms, and errors (non-2xx and socket errors)."""
    cmd = pinned(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "-s",
                  str(HERE / "post.lua"), url], "load")
    out = subprocess.run(cmd, env={**os.environ, "BODY": body}, capture_output=True, text=True,
                         timeout=seconds + 60)
    if out.returncode != 0:
        raise SystemExit(f"wrk failed: {out.stderr.strip()}")
    return parse_wrk(out.stdout)


def to_ms(value):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not m:
        raise ValueError(f"not a wrk duration: {value}")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m.group(2)]


def parse_wrk(text):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", text, re.M))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors += int(m.group(1)) if m else 0
    return {"rps": rps, "p50": to_ms(pct["50"]), "p99": to_ms(pct["99"]), "errors": errors}


def floor(args, function, seconds=1.0):
    """The function called in a loop in one pinned Python process: calls/s and µs per call."""
    code = f"""
import json, sys, time
sys.path.insert(0, {str(APPS)!r})
from functions import {function} as fn
kw = json.loads({BODIES[function]!r})
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < {seconds}:
    for _ in range(1000):
        fn(**kw)
    n += 1000
dt = time.perf_counter() - t0
print(json.dumps({{"rps": n / dt, "p50": dt / n * 1000, "p99": dt / n * 1000, "errors": 0}}))
"""
    out = subprocess.run(pinned([args.runtime_python, "-c", code], "server"), capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


def summary(values):
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def rounds_of(contenders, rounds):
    """Each round visits every contender; the order rotates so none always goes first."""
    for r in range(rounds):
        k = r % len(contenders)
        yield r, contenders[k:] + contenders[:k]


def warm_calls(servers, scenarios, args, progress):
    """results[function][conns][contender] = {metric: summary}"""
    raw = {}
    # The floor does not depend on concurrency: measured once per round, at the first scenario.
    floor_at = {function: conns for function, conns in reversed(scenarios)}
    for function, conns in scenarios:
        for r, order in rounds_of(servers, args.rounds):
            for s in order:
                progress.step(f"{function} c{conns} round {r + 1}: {s.name}")
                url = s.url(function)
                wrk(url, BODIES[function], conns, args.warmup)  # discarded
                raw.setdefault((function, conns, s.name), []).append(
                    wrk(url, BODIES[function], conns, args.seconds))
            if args.floor and floor_at[function] == conns:
                raw.setdefault((function, conns, "floor"), []).append(floor(args, function))
    results = {}
    for (function, conns, name), runs in raw.items():
        results.setdefault(function, {}).setdefault(conns, {})[name] = {
            metric: summary([run[metric] for run in runs]) for metric in ("rps", "p50", "p99", "errors")}
    return results


# ------------------------------------------------------------------ cold start, state, density

def timed_first_call(s, endpoint, source, **spec):
    t0 = time.perf_counter()
    deploy(s, endpoint, source, **spec)
    return timed_call(s, endpoint, t0)


def timed_call(s, endpoint, t0=None, body="{}"):
    """ms from t0 (default: now) to the answer of one call, which must succeed."""
    t0 = time.perf_counter() if t0 is None else t0
    status, answer = http("POST", f"http://127.0.0.1:{s.port}/fn/admin/{endpoint}", body)
    elapsed = (time.perf_counter() - t0) * 1000
    if status != 200:
        raise SystemExit(f"calling {endpoint} on {s.name}: {status} {answer[:300]!r}")
    return elapsed


COLD_SOURCES = {
    "plain": "def main():\n    return 1\n",
    "pandas": "import pandas as pd\n\ndef main():\n    return int(pd.Series([1, 2, 3]).sum())\n",
}


def cold_starts(args, warm_zygote, bare_zygote, progress):
    out = {}
    for r in range(args.rounds):
        progress.step(f"cold start round {r + 1}")
        t0 = time.perf_counter()
        subprocess.run(pinned([args.runtime_python, "-c", "import pandas"], "server"), check=True)
        out.setdefault("fresh `python -c \"import pandas\"`", []).append((time.perf_counter() - t0) * 1000)
        for label, s in (("pre-warmed zygote", warm_zygote), ("zygote without preload", bare_zygote)):
            for kind, source in COLD_SOURCES.items():
                endpoint = f"cold-{kind}-{r}"
                out.setdefault(f"deploy + first call, {kind}, {label}", []).append(
                    timed_first_call(s, endpoint, source))
    return {k: summary(v) for k, v in out.items()}


STATE_SOURCE = """from skython import store, load


def main(key: str):
    n = load(key, 0) + 1
    store(key, n)
    return n
"""
# Calls/s of the counter above (one `load` and one `store` each) at concurrency 16 on the
# embedded SQLite store, as `make bench` runs it (the server on one CPU).
STATE_TARGET = 15_000
STATE_CONNS = 16


MONGODB_URL = os.environ.get("SKYTHON_MONGODB_URL")


def start_mongodb(args):
    """`skython up --store $SKYTHON_MONGODB_URL` for the state scenario (a measure beside the
    embedded store, without a target), or None when that variable is not set."""
    if not MONGODB_URL:
        return None
    return start_skython(args, name="skython-mongodb", functions=["add"], store=MONGODB_URL)


def state_calls(args, servers, progress):
    """results[server] = {"state", "stateless", "ratio"}: the counter and, as the baseline
    measured in the same rounds, the stateless `add` on the same server, both at c16, with the
    ratio state/stateless of each round."""
    raw = {}
    for s in servers:
        if s.store != "sqlite":
            # A store of its own keeps what an earlier run deployed there.
            http("DELETE", f"http://127.0.0.1:{s.port}/api/v1/functions/admin/counter", token=TOKEN)
        deploy(s, "counter", STATE_SOURCE)
    body = '{"key": "k"}'
    for r, order in rounds_of(servers, args.rounds):
        for s in order:
            progress.step(f"state round {r + 1}: {s.name}")
            counter = f"http://127.0.0.1:{s.port}/fn/admin/counter"
            wrk(counter, body, STATE_CONNS, args.warmup)  # discarded
            state = wrk(counter, body, STATE_CONNS, args.seconds)
            wrk(s.url("add"), BODIES["add"], STATE_CONNS, args.warmup)
            stateless = wrk(s.url("add"), BODIES["add"], STATE_CONNS, args.seconds)
            runs = raw.setdefault((s.name, s.store), {"state": [], "stateless": [], "ratio": []})
            runs["state"].append(state)
            runs["stateless"].append(stateless)
            runs["ratio"].append({"rps": state["rps"] / stateless["rps"]})
    return {name: {"store": store, **{kind: {m: summary([run[m] for run in kinds]) for m in kinds[0]}
                                      for kind, kinds in runs.items()}}
            for (name, store), runs in raw.items()}


STORES = {"sqlite": "embedded SQLite", "mongodb": "MongoDB"}


def state_lines(state):
    """What the state scenario found, one line per server; the target for the embedded store."""
    lines = []
    for name, r in state.items():
        rps = r["state"]["rps"]["median"]
        line = (f"{name} ({STORES[r['store']]}): {rps:,.0f} calls/s (each one `load` and one `store`) "
                f"at c{STATE_CONNS}, {r['ratio']['rps']['median']:.2f}× the stateless `add` on the same "
                f"server ({r['stateless']['rps']['median']:,.0f} req/s, same rounds)")
        if r["store"] == "sqlite":
            line += (f"; target ≥ {STATE_TARGET:,}: {rps / STATE_TARGET:.2f}× "
                     f"{'met' if rps >= STATE_TARGET else 'MISSED'}")
        lines.append(line)
    return lines


def density(args, s, flask1, progress, n=100):
    progress.step(f"density: {n} functions")
    idle = 20
    base = s.pss_mib()
    for i in range(n):
        deploy(s, f"dens-{i}", f"def main(x: int):\n    return x + {i}\n",
               scaling={"idleSecondsToZero": idle})
    for i in range(n):
        status, _ = http("POST", f"http://127.0.0.1:{s.port}/fn/admin/dens-{i}", '{"x": 1}')
        if status != 200:
            raise SystemExit(f"dens-{i}: {status}")
    warm = s.pss_mib()
    warm_procs = len(s.pids())
    deadline = time.monotonic() + idle + 30
    while time.monotonic() < deadline and len(s.pids()) > warm_procs - n:
        time.sleep(1)
    time.sleep(2)
    cold = s.pss_mib()
    return {"functions": n, "before_mib": base, "warm_mib": warm, "warm_processes": warm_procs,
            "scaled_to_zero_mib": cold, "scaled_processes": len(s.pids()),
            "flask_one_function_mib": flask1.pss_mib() if flask1 else None}


# ------------------------------------------------------------------ A/B: two builds of Skython

# (key, what is measured, digits shown); lower is better for all but the first.
AB_MEASURES = [
    ("c64_rps", "warm `add` at concurrency 64, requests/s", 0),
    ("c1_p50_ms", "warm `add` at concurrency 1, p50 latency, ms", 3),
    ("start_ms", "worker start: deploy + first call of a plain function, ms", 1),
    ("restart_ms", "worker start alone: first call once its idle worker was stopped, ms", 1),
    ("mib_per_function", "memory per idle warm function (PSS of the server's processes / N), MiB", 2),
]


def delete(s, endpoint):
    status, answer = http("DELETE", f"http://127.0.0.1:{s.port}/api/v1/functions/admin/{endpoint}",
                          token=TOKEN)
    if status != 204:
        raise SystemExit(f"deleting {endpoint} on {s.name}: {status} {answer[:300]!r}")


def wait_for_processes(s, at_most, timeout=60):
    """Waits until the server runs at most `at_most` processes (its stopped workers are gone)."""
    deadline = time.monotonic() + timeout
    while len(s.pids()) > at_most:
        if time.monotonic() > deadline:
            raise SystemExit(f"{s.name}: still {len(s.pids())} processes after {timeout}s, expected {at_most}")
        time.sleep(0.1)


def ab_warm(s, conns, args):
    wrk(s.url("add"), BODIES["add"], conns, args.warmup)  # discarded
    return wrk(s.url("add"), BODIES["add"], conns, args.seconds)


def ab_worker_starts(s, tag, n=5):
    """Medians over n plain functions, in ms: deploy + first call (the deploy starts the worker
    from the pre-warmed zygote and loads the function), then, once each function's idle worker
    was stopped (idle for 1 s), its next call (a worker start and load without the deploy)."""
    procs = len(s.pids())
    endpoints = [f"ab-start-{tag}-{i}" for i in range(n)]
    first = [timed_first_call(s, e, COLD_SOURCES["plain"], scaling={"idleSecondsToZero": 1})
             for e in endpoints]
    wait_for_processes(s, procs)
    again = [timed_call(s, e) for e in endpoints]
    for e in endpoints:
        delete(s, e)
    wait_for_processes(s, procs)
    return statistics.median(first), statistics.median(again)


def ab_memory_per_function(s, tag, n):
    """PSS added by n functions, each with one idle warm worker that has answered once, per function."""
    procs, before = len(s.pids()), s.pss_mib()
    endpoints = [f"ab-mem-{tag}-{i}" for i in range(n)]
    for i, e in enumerate(endpoints):
        deploy(s, e, f"def main(x: int):\n    return x + {i}\n")
    for e in endpoints:
        timed_call(s, e, body='{"x": 1}')
    per_function = (s.pss_mib() - before) / n
    for e in endpoints:
        delete(s, e)
    wait_for_processes(s, procs)
    return per_function


def ab_rounds(servers, args, progress):
    """raw[server name][measure key] = one value per round. Each round measures every build once
    per measure, one right after the other (the order rotating between rounds)."""
    raw = {s.name: {key: [] for key, _, _ in AB_MEASURES} for s in servers}
    for r, order in rounds_of(servers, args.rounds):
        for s in order:
            progress.step(f"round {r + 1}: {s.name} warm add c64")
            raw[s.name]["c64_rps"].append(ab_warm(s, 64, args)["rps"])
        for s in order:
            progress.step(f"round {r + 1}: {s.name} warm add c1")
            raw[s.name]["c1_p50_ms"].append(ab_warm(s, 1, args)["p50"])
        for s in order:
            progress.step(f"round {r + 1}: {s.name} worker starts")
            first, again = ab_worker_starts(s, r)
            raw[s.name]["start_ms"].append(first)
            raw[s.name]["restart_ms"].append(again)
        for s in order:
            progress.step(f"round {r + 1}: {s.name} memory of {args.functions} functions")
            raw[s.name]["mib_per_function"].append(ab_memory_per_function(s, r, args.functions))
    return raw


def ab_rows(raw, old, new):
    """One row per measure: each build's summary over rounds, and the summary of the per-round
    ratios new/old. Rounds are paired: both builds ran in the same round, one right after the
    other, so the machine's drift over minutes largely cancels in each round's ratio."""
    rows = []
    for key, label, digits in AB_MEASURES:
        a, b = raw[old][key], raw[new][key]
        if len(a) != len(b) or not a:
            raise ValueError(f"{key}: {len(a)} rounds of {old} against {len(b)} of {new}")
        rows.append({"key": key, "label": label, "digits": digits, "old": summary(a), "new": summary(b),
                     "ratio": summary([y / x for x, y in zip(a, b)])})
    return rows


def ab_table(rows, old_label, new_label):
    lines = [f"| measure | old: {old_label} | new: {new_label} | new/old |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['label']} | {fmt(row['old'], '', row['digits'])} | "
                     f"{fmt(row['new'], '', row['digits'])} | {fmt(row['ratio'], '×', 3)} |")
    return lines


def ab_report(args, rows, loads, elapsed):
    m = machine()
    lines = [f"# Skython A/B: {args.baseline_label} against {args.label} — "
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC", "",
             f"- {m['cpu']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, Linux {m['kernel']}; "
             f"1-minute load average {loads[0]:.2f} before the run, {loads[1]:.2f} after",
             "- both builds' servers up at once (`skython up`, sandboxed, default preload), "
             + (f"pinned to CPU {CPUS[0]}, wrk to CPU {CPUS[1]}" if CPUS else "on one CPU with wrk"),
             f"- {args.rounds} rounds; in each, every measure runs on both builds one right after the "
             "other (the order rotating between rounds); warm runs: "
             f"{args.warmup}s discarded warm-up, then {args.seconds}s measured",
             "- worker starts: medians of 5 plain functions per round; memory: "
             f"{args.functions} functions per round, each deployed, called once and left warm "
             "(the PSS of all the server's processes after, minus before, over N), then deleted",
             "- figures: median (min–max) over rounds; new/old: the median (min–max) of the "
             "per-round ratios", ""]
    lines += ab_table(rows, args.baseline_label, args.label)
    lines += ["", f"`make bench-ab BASE=<rev>`; this run took {elapsed:.0f} s.", ""]
    return "\n".join(lines)


def loadavg():
    return float(Path("/proc/loadavg").read_text().split()[0])


def run_ab(args):
    started, load_before = time.monotonic(), loadavg()
    servers = []
    try:
        log(f"starting skython {args.baseline_label} (old) and {args.label} (new) …")
        servers = [start_skython(args, name="old", binary=args.baseline),
                   start_skython(args, name="new", binary=args.skython)]
        for s in servers:
            # Unused here: its worker would be stopped when idle, in the middle of some measure.
            delete(s, "norm")
        progress = Progress(args.rounds * len(servers) * 4)
        raw = ab_rounds(servers, args, progress)
        progress.finish()
    finally:
        for s in servers:
            s.stop()
    rows = ab_rows(raw, "old", "new")
    md = ab_report(args, rows, (load_before, loadavg()), time.monotonic() - started)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ab.md").write_text(md)
    (args.out / "ab.json").write_text(json.dumps(
        {"old": args.baseline_label, "new": args.label, "rounds": args.rounds,
         "functions": args.functions, "machine": machine(), "raw": raw, "rows": rows}, indent=1))
    print(md)
    return 0


# ------------------------------------------------------------------ report

def versions(args):
    code = ("import importlib.metadata as m, json, sys; print(json.dumps({'python': sys.version.split()[0], "
            "**{p: m.version(p) for p in ['fastapi', 'starlette', 'pydantic', 'uvicorn', 'uvloop', "
            "'httptools', 'flask', 'werkzeug', 'gunicorn', 'numpy', 'pandas']}}))")
    v = json.loads(subprocess.run([args.bench_python, "-c", code], capture_output=True, text=True,
                                  check=True).stdout)
    v["wrk"] = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split()[1]
    v["skython"] = git_describe()
    return v


def git_describe():
    return subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                          capture_output=True, text=True).stdout.strip() or "unknown"


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    mem = next(int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines()
               if l.startswith("MemTotal"))
    return {"cpu": cpu, "cpus": os.cpu_count(), "memory_gib": round(mem / 2**20, 1),
            "kernel": platform.release(), "os": platform.platform()}


def fmt(s, unit="", digits=0):
    f = f"{{:,.{digits}f}}"
    return f"{f.format(s['median'])}{unit} ({f.format(s['min'])}–{f.format(s['max'])})"


def best_rival(scenario, metric, lowest=False):
    rivals = {k: v[metric]["median"] for k, v in scenario.items()
              if k in ("fastapi", "fastapi-h11", "flask-1w")}
    if not rivals:
        return None, None
    name = (min if lowest else max)(rivals, key=rivals.get)
    return name, rivals[name]


def targets(warm, cold, machine_wide=None, state=None):
    out = []
    if "add" in warm and 64 in warm["add"]:
        sc = warm["add"][64]
        name, rival = best_rival(sc, "rps")
        ratio = sc["skython"]["rps"]["median"] / rival
        out.append(("warm throughput at c64 ≥ 5× the better of FastAPI/Flask (1 worker)",
                    f"{ratio:.2f}× ({name})", ratio >= 5))
    if "add" in warm and 1 in warm["add"]:
        sc = warm["add"][1]
        name, rival = best_rival(sc, "p50", lowest=True)
        ratio = sc["skython"]["p50"]["median"] / rival
        measured = f"{ratio:.2f}× ({name})"
        if "http-floor" in sc:
            floor_p50 = sc["http-floor"]["p50"]["median"]
            measured += (f"; {sc['skython']['p50']['median'] * 1000:.0f} vs {rival * 1000:.0f} µs, "
                         f"a do-nothing HTTP responder {floor_p50 * 1000:.0f} µs")
        out.append(("p50 at c1 ≤ 0.5× the better of the two", measured, ratio <= 0.5))
    if cold:
        fresh = cold["fresh `python -c \"import pandas\"`"]["median"]
        first = cold["deploy + first call, pandas, pre-warmed zygote"]["median"]
        out.append(("first call of a new pandas function ≤ 0.1× a fresh `import pandas`",
                    f"{first / fresh:.3f}× ({first:.0f} ms vs {fresh:.0f} ms)", first / fresh <= 0.1))
    state = state or {}
    sqlite = next((r for r in state.values() if r["store"] == "sqlite"), None)
    if sqlite:
        rps = sqlite["state"]["rps"]["median"]
        out.append((f"state calls (`load` + `store`) at c{STATE_CONNS} ≥ {STATE_TARGET:,}/s, embedded SQLite",
                    f"{rps:,.0f} calls/s, {rps / STATE_TARGET:.2f}× the target; "
                    f"{sqlite['ratio']['rps']['median']:.2f}× the stateless `add` "
                    f"({sqlite['stateless']['rps']['median']:,.0f} req/s) in the same rounds",
                    rps >= STATE_TARGET))
    runs = [*warm.values(), machine_wide or {}]
    errors = sum(r["errors"]["max"] for f in runs for sc in f.values() for r in sc.values())
    errors += sum(r[kind]["errors"]["max"] for r in state.values() for kind in ("state", "stateless"))
    out.append(("zero errors in every run", f"{errors:.0f} errors", errors == 0))
    return out


def warm_table(by_conns):
    lines = ["| concurrency | contender | requests/s | p50 | p99 | errors |", "|---|---|---|---|---|---|"]
    for conns, sc in by_conns.items():
        for name, r in sc.items():
            lines.append(f"| {conns} | {name} | {fmt(r['rps'])} | {fmt(r['p50'], ' ms', 3)} | "
                         f"{fmt(r['p99'], ' ms', 3)} | {r['errors']['max']:.0f} |")
        sky = sc["skython"]["rps"]["median"]
        ratios = ", ".join(f"Skython/{k} {sky / sc[k]['rps']['median']:.2f}×"
                           for k in sc if k not in ("skython", "floor"))
        lines.append(f"| {conns} | ratios | {ratios} | | | |")
    return lines + [""]


def report(args, warm, cold, state, dens, machine_wide, elapsed):
    lines = [f"# Skython benchmarks — {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC", ""]
    m, v = machine(), versions(args)
    lines += ["## Machine and versions", "",
              f"- {m['cpu']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, Linux {m['kernel']}",
              "- CPU budget: " + (f"every server (all its processes) pinned to CPU {CPUS[0]}, wrk to CPU {CPUS[1]}"
                                  if CPUS else "one CPU: no pinning possible, servers and wrk share it"),
              "- " + ", ".join(f"{k} {val}" for k, val in v.items()),
              f"- {args.rounds} rounds, contenders alternating (order rotated per round), "
              f"{args.warmup}s discarded warm-up then {args.seconds}s measured per run; "
              "figures are median (min–max) over rounds",
              "- Skython: `skython up` with its sandbox (bubblewrap, seccomp, cgroups as root), the "
              "function deployed from bench/apps/functions.py; FastAPI: uvicorn[standard] (uvloop, "
              "httptools), 1 worker, pydantic models, and fastapi-h11 the same on a bare `uvicorn` "
              "(asyncio, h11); Flask: gunicorn sync workers; floor: the "
              "function called in a loop in one Python process; http-floor: an HTTP/1.1 responder "
              "in Rust that answers every request with the same body and does nothing else "
              "(bench/http-floor), the least any server pays here for loopback TCP and its wake-ups", ""]
    lines += ["## Targets", "", "| target | measured | |", "|---|---|---|"]
    for what, measured, met in targets(warm, cold, machine_wide, state):
        lines.append(f"| {what} | {measured} | {'met' if met else '**missed**'} |")
    lines.append("")
    # What profiling found where targets are missed: kept by hand next to this script.
    profile = HERE / "PROFILE.md"
    if profile.exists():
        lines += [profile.read_text().strip(), ""]
    for function, by_conns in warm.items():
        lines += [f"## Warm calls: `{function}`", ""] + warm_table(by_conns)
    if machine_wide:
        lines += ["## Warm calls: `add`, the whole machine", "",
                  f"Every server and wrk share all {os.cpu_count()} CPUs (the same budget for each, "
                  "wrk included): what each design makes of a machine rather than of one CPU.", ""]
        lines += warm_table(machine_wide)
    if cold:
        lines += ["## Cold start", "", "| what | ms |", "|---|---|"]
        lines += [f"| {k} | {fmt(s, '', 1)} |" for k, s in cold.items()]
        lines.append("")
    if state:
        lines += [f"## State (`load` + `store` per call, concurrency {STATE_CONNS}, one key)", "",
                  "Each round measures the counter and then the stateless `add` on the same server "
                  "(the baseline); the ratio is taken per round.", "",
                  "| server | store | calls/s | p50 | p99 | errors | stateless `add` req/s | ratio |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, r in state.items():
            st = r["state"]
            lines.append(f"| {name} | {STORES[r['store']]} | {fmt(st['rps'])} | {fmt(st['p50'], ' ms', 3)} | "
                         f"{fmt(st['p99'], ' ms', 3)} | {st['errors']['max']:.0f} | "
                         f"{fmt(r['stateless']['rps'])} | {fmt(r['ratio']['rps'], '×', 2)} |")
        lines.append("")
    if dens:
        lines += ["## Density", "",
                  f"- Skython before deploying: {dens['before_mib']:.0f} MiB (gateway, zygote with numpy/pandas/scipy preloaded)",
                  f"- {dens['functions']} functions deployed, each with a warm worker: {dens['warm_mib']:.0f} MiB in "
                  f"{dens['warm_processes']} processes ({(dens['warm_mib'] - dens['before_mib']) / dens['functions']:.1f} MiB per function), "
                  "proportional set size (shared copy-on-write pages counted once)",
                  f"- after scale to zero: {dens['scaled_to_zero_mib']:.0f} MiB in {dens['scaled_processes']} processes"]
        if dens["flask_one_function_mib"]:
            lines.append(f"- for scale: one Flask + gunicorn (1 worker) server for one function: "
                         f"{dens['flask_one_function_mib']:.0f} MiB; 100 of them ≈ {dens['flask_one_function_mib'] * 100:.0f} MiB")
        lines.append("")
    lines += ["## Reproduce", "", "`make bench` (this file and latest.png), `make bench-quick` (≤ 60 s).",
              f"This run took {elapsed:.0f} s.", ""]
    return "\n".join(lines)


def chart(warm, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(warm), figsize=(6 * len(warm), 4.5), squeeze=False)
    for ax, (function, by_conns) in zip(axes[0], warm.items()):
        # The floors are in the tables; beside the contenders they would only squash the bars.
        names = [n for n in next(iter(by_conns.values())) if n not in ("floor", "http-floor")]
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            xs = [j + i * width for j in range(len(by_conns))]
            med = [by_conns[c][name]["rps"]["median"] for c in by_conns]
            lo = [m - by_conns[c][name]["rps"]["min"] for m, c in zip(med, by_conns)]
            hi = [by_conns[c][name]["rps"]["max"] - m for m, c in zip(med, by_conns)]
            ax.bar(xs, med, width, yerr=[lo, hi], label=name, capsize=3)
        ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(by_conns))])
        ax.set_xticklabels([f"c{c}" for c in by_conns])
        ax.set_title(f"warm calls: {function}")
        ax.set_ylabel("requests/s (median, min–max)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=len(names), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ------------------------------------------------------------------ main

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skython", required=True, help="the skython binary (a release build)")
    p.add_argument("--runtime-python", required=True, help="Python of Skython's runtime venv")
    p.add_argument("--bench-python", default=sys.executable, help="Python with FastAPI, Flask, uvicorn, gunicorn")
    p.add_argument("--http-floor", help="the http-floor binary (a release build): the transport floor")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--quick", action="store_true", help="only warm `add` at c64 against FastAPI and Flask")
    p.add_argument("--state", action="store_true",
                   help="only the state scenario (the counter and the stateless `add` at c16, embedded "
                   "SQLite, and MongoDB if SKYTHON_MONGODB_URL is set)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--baseline", help="A/B mode: an earlier skython binary, measured against --skython "
                   "(warm add, worker starts, memory per function); writes ab.md and ab.json")
    p.add_argument("--baseline-label", default="baseline", help="what --baseline was built from")
    p.add_argument("--label", default=None, help="what --skython was built from (default: git describe)")
    p.add_argument("--functions", type=int, default=30, help="A/B mode: functions in the memory measure")
    args = p.parse_args()
    args.floor = not args.quick
    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is needed (make bench installs it)")
    if args.baseline:
        args.label = args.label or git_describe()
        return run_ab(args)
    started = time.monotonic()
    servers = []
    try:
        if args.state:
            log("starting skython" + (" (embedded SQLite and MongoDB)" if MONGODB_URL else "") + " …")
            servers = [start_skython(args, functions=["add"]), *filter(None, [start_mongodb(args)])]
            progress = Progress(args.rounds * len(servers))
            state = state_calls(args, servers, progress)
            progress.finish()
            for line in state_lines(state):
                print(line)
            return 0
        if args.quick:
            scenarios = [("add", 64)]
            log("starting skython, fastapi, flask …")
            servers = [start_skython(args), start_fastapi(args), start_flask(args, 1)]
            progress = Progress(len(scenarios) * args.rounds * len(servers))
            warm = warm_calls(servers, scenarios, args, progress)
            progress.finish()
            sc = warm["add"][64]
            sky, fa, fl = (sc[n]["rps"]["median"] for n in ("skython", "fastapi", "flask-1w"))
            errors = sum(r["errors"]["max"] for r in sc.values())
            if errors:
                log(f"errors during the runs: {errors:.0f}")
            print(f"warm throughput vs best of fastapi/flask: {sky / max(fa, fl):.1f}x "
                  f"(skython {sky:.0f} req/s, fastapi {fa:.0f} req/s, flask {fl:.0f} req/s)")
            return 1 if errors else 0
        scenarios = [(f, c) for f in BODIES for c in (1, 16, 64)]
        log("starting skython, fastapi (uvloop and plain), flask (1 and 2 workers) …")
        servers = [start_skython(args), start_fastapi(args), start_fastapi(args, plain=True),
                   start_flask(args, 1), start_flask(args, 2)]
        if args.http_floor:
            servers.append(start_http_floor(args))
        bare = start_skython(args, name="skython-bare", preload="")
        state_rounds = args.rounds * (2 if MONGODB_URL else 1)
        progress = Progress((len(scenarios) + 1) * args.rounds * len(servers) + 2 * args.rounds
                            + state_rounds + 1)
        warm = warm_calls(servers, scenarios, args, progress)
        cold = cold_starts(args, servers[0], bare, progress)
        bare.stop()
        mongodb = start_mongodb(args)
        try:
            state = state_calls(args, [servers[0], *filter(None, [mongodb])], progress)
        finally:
            if mongodb:
                mongodb.stop()
        dens = density(args, servers[0], servers[3], progress)
        machine_wide = None
        if CPUS is not None:
            set_budget(servers, "machine")
            args.floor = False
            machine_wide = warm_calls(servers, [("add", 64)], args, progress)["add"]
        progress.finish()
        args.out.mkdir(parents=True, exist_ok=True)
        md = report(args, warm, cold, state, dens, machine_wide, time.monotonic() - started)
        (args.out / "latest.md").write_text(md)
        (args.out / "latest.json").write_text(json.dumps(
            {"warm": warm, "cold": cold, "state": state, "density": dens, "machine": machine_wide},
            indent=1, default=str))
        chart(warm, args.out / "latest.png")
        print(md)
        for line in state_lines(state):
            print(line)
        for what, measured, met in targets(warm, cold, machine_wide, state):
            print(f"{'met   ' if met else 'MISSED'} {what}: {measured}")
        return 0
    finally:
        for s in servers:
            s.stop()


if __name__ == "__main__":
    sys.exit(main())
