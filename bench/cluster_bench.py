#!/usr/bin/env python3
"""Skython on the one-node test cluster (`make cluster-up`): `skython gateway` and `skython
operator` on the host, runner pods on the node, as the cluster e2e tests run them.

`make bench-cluster` measures, in a namespace of its own (deleted at the end, however the run
ends), and writes bench/results/cluster.md:

1. time to first answer from zero (the function has no pod at all; the call goes through the
   gateway), median and max of N cold starts, with 10 SkyFunctions deployed; split into the
   gateway's phases (`skython_pod_cold_start_seconds`: scale written, pod seen, port open, first
   answer), read from its /metrics before and after each cold start;
2. the same with 200 SkyFunctions deployed (190 of them at zero, never called);
3. the gateway's overhead per warm call: the same pod called through the gateway and directly at
   its IP (`POST http://POD_IP:8080/`), p50 at concurrency 1 and throughput at concurrency 64;
4. the replica-seconds of a standard burst against the ideal (see `burst`);
5. the warm pool, in a second namespace whose operator keeps pool pods and whose gateway claims
   them: time to first answer from zero on a pool hit (each call a function never called, with
   a claimable pool pod), on a pool miss (the pool just emptied by two claims: the next function
   takes its Deployment's path), and the memory of an idle pool pod (PSS of its processes,
   read from the host's /proc).

Python standard library only; `wrk` for the warm calls when present (threads otherwise). Targets
are printed as met or missed; not a CI gate.
"""

import argparse
import datetime
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import urlsplit

# The progress line, log, HTTP and wrk helpers and the summaries are bench.py's.
from bench import Progress, fmt, git_describe, http, loadavg, log, parse_wrk, summary, to_ms

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CRD = ROOT / "helm/skython/files/skyfunctions.skython.io.yaml"
TOKEN = "sky_bench_" + os.urandom(8).hex()
HOST_FROM_PODS = "10.88.0.1"  # the cluster's bridge: pods reach the host (the gateway) there
RUNNER_PORT = 8080
# What every bench function asks for: the node has 2 CPUs, and pods that do not fit stay Pending.
SMALL = {"cpu": "100m", "memory": "128Mi"}
# What a function gets unless it asks otherwise (1 CPU): the cold starts the target is about.
DEFAULT_CPU = {"cpu": "1", "memory": "256Mi"}

ADD = "def add(a: int, b: int) -> int:\n    return a + b\n"
ADD_BODY = json.dumps({"a": 2, "b": 3})
NAP = "import time\n\ndef nap(s: float = 0.05) -> str:\n    time.sleep(s)\n    return 'ok'\n"

# The standard burst: BURST_CALLERS callers, each calling again as soon as it has its answer,
# of a function that sleeps 50 ms and serves BURST_CONCURRENCY calls per pod, from zero.
BURST_CALLERS = 20
BURST_CONCURRENCY = 4
BURST_IDLE_SECONDS = 2
SAMPLE_SECONDS = 0.2

COLD_TARGET_S = 1.0
MANY_RATIO_TARGET = 1.2
POOL_HIT_P50_MS, POOL_HIT_P99_MS, POOL_MISS_S = 50, 200, 1.0
POOL_SIZE = 2
POOL_HITS = 20
POOL_MISS_ROUNDS = 5
# Answers with the name of the pod that ran it: a pool pod's tells a hit from a miss.
WHO = "import socket\n\ndef who() -> str:\n    return socket.gethostname()\n"
POOL_POD_PREFIX = "skython-pool-"
# A CPU request no node here has: the function's Deployment never takes over from its claimed pod.
NEVER_FITS = {"cpu": "8", "memory": "128Mi"}


# ------------------------------------------------------------------ pure parts

METRIC_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """Prometheus text → {(name, ((label, value), …) sorted): value}."""
    out = {}
    for line in text.splitlines():
        m = METRIC_LINE.match(line)
        if not m or line.startswith("#"):
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        labels = tuple(sorted(LABEL.findall(m.group(2) or "")))
        out[(m.group(1), labels)] = value
    return out


def metric(samples, name, **labels):
    """The sum of a metric's samples that carry all of `labels`; None when there is none."""
    want = set(labels.items())
    values = [v for (n, ls), v in samples.items() if n == name and want <= set(ls)]
    return sum(values) if values else None


def phase_deltas(before, after, function):
    """Seconds of each cold-start phase between two scrapes of the gateway's /metrics: the
    histogram's added sum over its added count (one cold start in between: its own figures)."""
    out = {}
    phases = {dict(ls)["phase"] for (n, ls) in after
              if n == "skython_pod_cold_start_seconds_count" and dict(ls).get("function") == function}
    for phase in phases:
        def d(suffix):
            name = f"skython_pod_cold_start_seconds_{suffix}"
            return ((metric(after, name, function=function, phase=phase) or 0)
                    - (metric(before, name, function=function, phase=phase) or 0))
        if d("count") > 0:
            out[phase] = d("sum") / d("count")
    return out


PHASES = ("scale", "pod_created", "port_open", "first_answer")


def percentile(values, q):
    """The nearest-rank q-th percentile (q in 0-100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def pss_kib(pid):
    """The proportional set size of one process, from /proc/<pid>/smaps_rollup (0 if gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def step_integral(samples, end):
    """∫ of a step function given as time-ordered (t, value) samples, each value holding until
    the next sample (the last until `end`)."""
    total = 0.0
    for (t, v), (t_next, _) in zip(samples, samples[1:] + [(end, None)]):
        total += v * max(0.0, min(t_next, end) - t)
    return total


def ideal_replicas(in_flight, concurrency):
    """What a perfect autoscaler runs for `in_flight` calls: just enough pods, none idle."""
    return math.ceil(in_flight / concurrency)


def pod_seconds(lifetimes, start, end):
    """Σ over pods of the time each existed within [start, end]; `lifetimes` maps a pod to
    (first seen, gone or None)."""
    total = 0.0
    for born, gone in lifetimes.values():
        total += max(0.0, min(gone if gone is not None else end, end) - max(born, start))
    return total


def split_json_stream(buffer):
    """The complete JSON documents at the head of `buffer` (kubectl --watch prints them one
    after another) and what is left of it."""
    decoder, docs, i = json.JSONDecoder(), [], 0
    while True:
        while i < len(buffer) and buffer[i].isspace():
            i += 1
        if i == len(buffer):
            return docs, ""
        try:
            doc, i = decoder.raw_decode(buffer, i)
        except json.JSONDecodeError:
            return docs, buffer[i:]
        docs.append(doc)


def targets(results):
    """(what, measured, met or None when the issue sets no target) for every figure."""
    out = []
    few, many = results.get("cold"), results.get("cold_many")
    if few:
        t = few["seconds"]
        out.append((f"time to first answer from zero, {few['functions']} functions deployed: "
                    f"median and max ≤ {COLD_TARGET_S:g} s",
                    f"median {t['median']:.3f} s, max {t['max']:.3f} s",
                    t["max"] <= COLD_TARGET_S))
    if few and many:
        ratio = many["seconds"]["median"] / few["seconds"]["median"]
        out.append((f"the same with {many['functions']} functions deployed ≤ {MANY_RATIO_TARGET:g}× "
                    f"the time with {few['functions']}",
                    f"{ratio:.2f}× (median {many['seconds']['median']:.3f} s, max "
                    f"{many['seconds']['max']:.3f} s)", ratio <= MANY_RATIO_TARGET))
    if results.get("cold_cpu"):
        t = results["cold_cpu"]["seconds"]
        out.append(("the same with a 100m CPU limit instead of 1 (no target: what the quota costs)",
                    f"median {t['median']:.3f} s, max {t['max']:.3f} s", None))
    warm = results.get("warm")
    if warm:
        c1 = warm["gateway"]["c1"]["p50"]["median"] - warm["direct"]["c1"]["p50"]["median"]
        out.append(("gateway overhead per warm call at c1 (p50 through the gateway − p50 direct)",
                    f"{c1:+.3f} ms", None))
        ratio = warm["gateway"]["c64"]["rps"]["median"] / warm["direct"]["c64"]["rps"]["median"]
        out.append(("c64 throughput through the gateway / calling the pod directly",
                    f"{ratio:.2f}×", None))
    pool = results.get("pool")
    if pool:
        hits = [t * 1000 for t in pool["hits"]]
        p50, p99 = percentile(hits, 50), percentile(hits, 99)
        out.append((f"from zero on a pool hit ({len(hits)} cold calls): p50 ≤ {POOL_HIT_P50_MS} ms",
                    f"{p50:.1f} ms", p50 <= POOL_HIT_P50_MS))
        out.append((f"from zero on a pool hit: p99 ≤ {POOL_HIT_P99_MS} ms", f"{p99:.1f} ms",
                    p99 <= POOL_HIT_P99_MS))
        if pool["misses"]:
            misses = [m["seconds"] for m in pool["misses"]]
            out.append((f"from zero on a pool miss ({len(misses)} calls): max ≤ {POOL_MISS_S:g} s",
                        f"median {statistics_median(misses):.3f} s, max {max(misses):.3f} s",
                        max(misses) <= POOL_MISS_S))
        if pool["idle_pss_mib"]:
            out.append(("memory per idle pool pod (PSS of its processes; no target)",
                        f"median {statistics_median(pool['idle_pss_mib']):.0f} MiB", None))
    burst = results.get("burst")
    if burst:
        out.append(("replica-seconds of the standard burst / the ideal",
                    f"{burst['ready_seconds'] / burst['ideal_seconds']:.2f}× ready pods, "
                    f"{burst['pod_seconds'] / burst['ideal_seconds']:.2f}× pods existing", None))
    return out


# ------------------------------------------------------------------ HTTP

class Client:
    """One keep-alive connection (what wrk and the gateway use), reopened after an error."""

    def __init__(self, url, timeout=60):
        u = urlsplit(url)
        self.host, self.port, self.path, self.timeout = u.hostname, u.port or 80, u.path or "/", timeout
        self.conn = None

    def post(self, body):
        """(status, body); status 0 for a transport error."""
        try:
            if self.conn is None:
                self.conn = HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.conn.request("POST", self.path, body, {"Content-Type": "application/json"})
            r = self.conn.getresponse()
            return r.status, r.read()
        except OSError as e:
            self.close()
            return 0, str(e).encode()

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def load(url, body, conns, seconds, use_wrk=False):
    """Calls `url` from `conns` keep-alive connections for `seconds`: requests/s, p50 and p99 in
    ms, errors. Python threads, each finishing its call before it stops; or wrk, which is faster
    but ends its run with calls in flight (see `--wrk`)."""
    if use_wrk:
        out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "-s",
                              str(HERE / "post.lua"), url], env={**os.environ, "BODY": body},
                             capture_output=True, text=True, timeout=seconds + 60)
        if out.returncode != 0:
            raise SystemExit(f"wrk failed: {out.stderr.strip()}")
        return parse_wrk(out.stdout)
    latencies, errors, lock = [], [0], threading.Lock()
    deadline = time.monotonic() + seconds

    def caller():
        c, mine, bad = Client(url), [], 0
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            status, _ = c.post(body)
            mine.append((time.perf_counter() - t0) * 1000)
            bad += status != 200
        c.close()
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=caller) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    return {"rps": len(latencies) / seconds, "p50": latencies[len(latencies) // 2],
            "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], "errors": errors[0]}


# ------------------------------------------------------------------ the cluster

def no_cluster_reason(kubeconfig):
    """Why the cluster cannot be used, or None when it answers."""
    if not shutil.which("kubectl"):
        return "kubectl is not installed"
    if not Path(kubeconfig).exists():
        return f"no cluster: {kubeconfig} is missing"
    out = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), "get", "--raw", "/readyz"],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return f"the cluster does not answer: {out.stderr.strip()[:200]}"
    return None


class Kube:
    def __init__(self, kubeconfig, namespace):
        self.kubeconfig, self.namespace = str(kubeconfig), namespace

    def cmd(self, *args):
        return ["kubectl", "--kubeconfig", self.kubeconfig, "-n", self.namespace, *args]

    def run(self, *args, stdin=None, check=True):
        out = subprocess.run(self.cmd(*args), input=stdin, capture_output=True, text=True, timeout=300)
        if check and out.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def get(self, what):
        return json.loads(self.run("get", *what.split(), "-o", "json"))

    def apply(self, obj):
        self.run("apply", "-f", "-", stdin=json.dumps(obj))

    def pods(self, function=None):
        selector = f"skython.io/function={function}" if function else "skython.io/function"
        return self.get(f"pods -l {selector}")["items"]


def sky_function(name, source, **spec):
    return {"apiVersion": "skython.io/v1alpha1", "kind": "SkyFunction", "metadata": {"name": name},
            "spec": {"owner": "admin", "endpoint": name, "source": source, "resources": SMALL,
                     "access": "public", **spec}}


def wait(what, check, timeout, every=0.5):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


class Proc:
    """A process of ours in its own session (stopped as a whole), its output in a temp file."""

    def __init__(self, name, cmd, env):
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-cluster-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def text(self):
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def check(self):
        if self.proc.poll() is not None:
            tail = "\n".join(self.text().splitlines()[-30:])
            raise SystemExit(f"{self.name} exited with {self.proc.returncode}:\n{tail}")

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


def free_port(host):
    import socket
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Stack:
    """A namespace with the CRD, `skython gateway` and `skython operator`, all removed by stop()."""

    def __init__(self, args, pool=False):
        self.args, self.pool = args, pool
        suffix = "-pool" if pool else ""
        self.k = Kube(args.kubeconfig, f"skython-bench-{os.getpid()}{suffix}")
        self.procs, self.dirs, self.namespace_made = [], [], False

    def start(self):
        k, args = self.k, self.args
        subprocess.run(["kubectl", "--kubeconfig", k.kubeconfig, "apply", "-f", str(CRD)],
                       check=True, capture_output=True)
        k.run("wait", "--for=condition=Established", "crd/skyfunctions.skython.io", "--timeout=60s")
        k.run("create", "namespace", k.namespace)
        self.namespace_made = True
        data, runtime = (tempfile.mkdtemp(prefix="bench-cluster-") for _ in range(2))
        self.dirs += [data, runtime]
        gateway_pool, operator_pool = [], []
        if self.pool:
            key = Path(data) / "pool.key"
            key.write_text(os.urandom(32).hex())
            gateway_pool = ["--pool-key-file", str(key)]
            operator_pool = gateway_pool + ["--pool-size", str(POOL_SIZE), "--pool-refill-per-second", "2",
                                            "--pool-cpu", "100m", "--pool-memory", "256Mi"]
        env = {**os.environ, "SKYTHON_ADMIN_TOKEN": TOKEN, "SKYTHON_PYTHON": args.python,
               "SKYTHON_LOG": os.environ.get("SKYTHON_LOG", "warn")}
        ns = k.namespace
        port = free_port(HOST_FROM_PODS)
        gateway = Proc("gateway", [args.skython, "gateway", "--addr", f"{HOST_FROM_PODS}:{port}",
                                   "--data-dir", data, "--kubeconfig", k.kubeconfig,
                                   "--function-namespace", ns, "--watch-namespace", ns,
                                   "--lease-namespace", ns, *gateway_pool], env)
        self.procs.append(gateway)
        self.url = wait("the gateway's URL", lambda: gateway.check() or next(
            (line.split("Skython is running at ", 1)[1].strip() for line in gateway.text().splitlines()
             if "Skython is running at " in line), None), 120, every=0.1)
        metrics_port = free_port("127.0.0.1")
        operator = Proc("operator", [args.skython, "operator", "--kubeconfig", k.kubeconfig,
                                     "--namespace", ns, "--lease-namespace", ns,
                                     "--metrics-addr", f"127.0.0.1:{metrics_port}",
                                     "--runtime-dir", runtime, "--gateway-url", self.url,
                                     *operator_pool], env)
        self.procs.append(operator)

        def leading():
            operator.check()
            try:
                _, text = http("GET", f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
            except OSError:
                return False
            return metric(parse_metrics(text.decode()), "skython_operator_leader") == 1
        wait("the operator to lead", leading, 60)

    def metrics(self):
        status, text = http("GET", f"{self.url}/metrics", token=TOKEN, timeout=10)
        if status != 200:
            raise SystemExit(f"the gateway's /metrics answered {status}: {text[:200]!r}")
        return parse_metrics(text.decode())

    def call(self, endpoint, body, timeout=60):
        return http("POST", f"{self.url}/fn/admin/{endpoint}", body, timeout=timeout)

    def check(self):
        for p in self.procs:
            p.check()

    def dump_logs(self, lines=20):
        """The last lines of the gateway's and the operator's logs, for a failed run."""
        for p in self.procs:
            log(f"--- {p.name} (last {lines} lines)", *p.text().splitlines()[-lines:], sep="\n")

    def stop(self):
        """Stops everything once (a second call finds nothing left)."""
        for p in reversed(self.procs):
            p.stop()
        if self.namespace_made:
            self.k.run("delete", "namespace", self.k.namespace, "--wait=false", check=False)
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.procs, self.dirs, self.namespace_made = [], [], False


def wait_at_zero(stack, name, timeout=120):
    """Until the function wants no replica and has no pod left (none starting, none stopping)."""
    def at_zero():
        stack.check()
        f = stack.k.get(f"skyfunction {name}")
        return f["spec"].get("replicas") == 0 and not stack.k.pods()
    wait(f"{name} to be at zero with no pod left", at_zero, timeout)


# ------------------------------------------------------------------ measures

def cold_starts(stack, name, n, functions, progress, what):
    """n first answers from zero (one discarded before them), each with its phases."""
    runs = []
    for i in range(n + 1):
        progress.step(f"{what}: cold start {i}/{n}" if i else f"{what}: warm-up cold start")
        wait_at_zero(stack, name)
        before = stack.metrics()
        t0 = time.perf_counter()
        status, answer = stack.call(name, ADD_BODY)
        seconds = time.perf_counter() - t0
        if status != 200:
            raise SystemExit(f"cold start of {name}: {status} {answer[:300]!r}")
        time.sleep(0.2)  # the first_answer phase is recorded as the answer leaves
        if i:
            runs.append({"seconds": seconds, "phases": phase_deltas(before, stack.metrics(), f"admin/{name}")})
    return cold_summary(runs, functions)


def cold_summary(runs, functions):
    """Cold starts' times and phases (the phases every run has), as `cold_table` shows them."""
    phases = {p: summary([r["phases"][p] for r in runs]) for p in PHASES
              if all(p in r["phases"] for r in runs)}
    return {"functions": functions, "runs": runs, "seconds": summary([r["seconds"] for r in runs]),
            "phases": phases}


def statistics_median(values):
    return summary(values)["median"]


def pool_bench(args, progress):
    """Cold calls on a warm pool: hits, misses, and what an idle pool pod holds."""
    stack = Stack(args, pool=True)
    try:
        progress.step(f"pool: starting a gateway and an operator with a pool of {POOL_SIZE}")
        stack.start()
        stack.k.apply({"apiVersion": "v1", "kind": "List", "items": [
            sky_function(f"hit{i:02d}", WHO.replace("def who", f"def hit{i:02d}"), replicas=0,
                         resources=NEVER_FITS, scaling={"idleSecondsToZero": 1})
            for i in range(POOL_HITS)] + [
            sky_function(f"m{r}x{j}", WHO.replace("def who", f"def m{r}x{j}"), replicas=0,
                         # The pool's takers never start pods of their own; the one that misses
                         # starts its Deployment's, with a function's default CPU.
                         resources=DEFAULT_CPU if j == POOL_SIZE else NEVER_FITS,
                         scaling={"idleSecondsToZero": 1})
            for r in range(args.miss_rounds) for j in range(POOL_SIZE + 1)]})
        wait_deployed(stack, POOL_HITS + args.miss_rounds * (POOL_SIZE + 1))

        def claimable(n):
            def enough():
                stack.check()
                return metric(stack.metrics(), "skython_pool_pods", runtime="standard") >= n
            wait(f"{n} claimable pool pods", enough, 120, every=0.1)

        claimable(POOL_SIZE)
        idle = []
        for pod in stack.k.get("pods -l skython.io/pool,!skython.io/function")["items"]:
            pid = runner_pid(pod["metadata"]["name"])
            if pid:
                idle.append(sum(pss_kib(p) for p in process_tree(pid)) / 1024)
        hits = []
        for i in range(POOL_HITS):
            progress.step(f"pool: hit {i + 1}/{POOL_HITS}")
            claimable(1)
            t0 = time.perf_counter()
            status, answer = stack.call(f"hit{i:02d}", "{}")
            seconds = time.perf_counter() - t0
            if status != 200 or not json.loads(answer).startswith(POOL_POD_PREFIX):
                raise SystemExit(f"pool hit {i}: {status} {answer[:300]!r}")
            hits.append(seconds)
        misses = []
        for r in range(args.miss_rounds):
            progress.step(f"pool: a miss after {POOL_SIZE} claims emptied the pool, {r + 1}/{args.miss_rounds}")
            # No pod of an earlier call left: the one that misses must find room on the node.
            wait(f"no function pod left before miss round {r}", lambda: not stack.k.pods(), 180)
            claimable(POOL_SIZE)
            answers = []

            def call(j):
                t0 = time.perf_counter()
                status, answer = stack.call(f"m{r}x{j}", "{}")
                answers.append((j, status, answer, time.perf_counter() - t0))
            # The pool's pods taken at once; then, before any replacement is up, one more.
            threads = [threading.Thread(target=call, args=(j,)) for j in range(POOL_SIZE)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            before = stack.metrics()
            call(POOL_SIZE)
            time.sleep(0.2)  # the first_answer phase is recorded as the answer leaves
            phases = phase_deltas(before, stack.metrics(), f"admin/m{r}x{POOL_SIZE}")
            for j, status, answer, seconds in answers:
                if status != 200:
                    raise SystemExit(f"pool miss round {r}: {status} {answer[:300]!r}")
                if (j == POOL_SIZE) == json.loads(answer).startswith(POOL_POD_PREFIX):
                    raise SystemExit(f"pool miss round {r}: call {j} answered by {answer!r}")
                if j == POOL_SIZE:
                    misses.append({"seconds": seconds, "phases": phases})
        return {"hits": hits, "misses": misses, "idle_pss_mib": idle}
    except BaseException:
        stack.dump_logs()
        raise
    finally:
        stack.stop()


def runner_pid(pod):
    """The host pid of the runner process of `pod` (the bench runs as root on the node)."""
    wanted = f"SKYTHON_POD_NAME={pod}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"runner" in cmdline and wanted in environ:
            return int(entry.name)
    return None


def process_tree(pid):
    """`pid` and every process below it."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree = [pid]
    for p in tree:
        tree.extend(c for c, pp in parents.items() if pp == p)
    return tree


def fillers(first, count):
    """Functions that are deployed and never called: created at zero replicas."""
    return {"apiVersion": "v1", "kind": "List", "items": [
        sky_function(f"idle-{i:03d}", f"def main(x: int) -> int:\n    return x + {i}\n",
                     replicas=0, scaling={"minReplicas": 0, "idleSecondsToZero": 1})
        for i in range(first, first + count)]}


def wait_deployed(stack, count, timeout=300):
    """Until the operator made a Deployment for each of `count` SkyFunctions."""
    def done():
        stack.check()
        return len(stack.k.run("get", "deployments", "-o", "name").split()) >= count
    wait(f"{count} Deployments", done, timeout, every=1)


def warm_overhead(stack, args, progress):
    """The same warm pod called through the gateway and at its own IP, alternating."""
    spec = {"resources": {"cpu": args.warm_cpu, "memory": "256Mi"},
            "scaling": {"minReplicas": 1, "maxReplicas": 1}}
    stack.k.apply(sky_function("warm", ADD, **spec))
    pod = wait("the pod of `warm` to be Ready", lambda: next(
        (p for p in stack.k.pods("warm") if p["status"].get("podIP") and all(
            c.get("ready") for c in p["status"].get("containerStatuses", [{}]))), None), 120)
    urls = {"gateway": f"{stack.url}/fn/admin/warm", "direct": f"http://{pod['status']['podIP']}:{RUNNER_PORT}/"}
    for who, url in urls.items():
        status, answer = http("POST", url, ADD_BODY)
        if status != 200 or json.loads(answer) != 5:
            raise SystemExit(f"warm {who}: {status} {answer[:300]!r}")
    raw = {who: {"c1": [], "c64": []} for who in urls}
    left_in_flight = []
    for r in range(args.rounds):
        order = list(urls) if r % 2 == 0 else list(reversed(urls))
        for conns in (1, 64):
            for who in order:
                progress.step(f"warm calls round {r + 1}: {who} c{conns}")
                load(urls[who], ADD_BODY, conns, 1, args.wrk)  # discarded warm-up
                raw[who][f"c{conns}"].append(load(urls[who], ADD_BODY, conns, args.seconds, args.wrk))
                if who == "gateway":
                    # Every client has its answer: the gateway must count nothing in flight.
                    time.sleep(0.5)
                    left_in_flight.append(metric(stack.metrics(), "skython_function_in_flight",
                                                 function="admin/warm") or 0)
    stack.k.run("delete", "skyfunction", "warm", "--wait=true")
    out = {who: {c: {m: summary([run[m] for run in runs]) for m in ("rps", "p50", "p99", "errors")}
                 for c, runs in by_c.items()} for who, by_c in raw.items()}
    out["left_in_flight"] = max(left_in_flight)
    return out


class PodWatch:
    """Every pod of a function, from when it appears (Pending included) to when it is gone:
    `kubectl get pods --watch`, one process for the whole burst."""

    def __init__(self, k, function):
        self.lifetimes, self.lock = {}, threading.Lock()
        self.proc = subprocess.Popen(k.cmd("get", "pods", "-l", f"skython.io/function={function}",
                                           "--watch", "--output-watch-events", "-o", "json"),
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self.read, daemon=True).start()

    def read(self):
        buffer = ""
        for line in self.proc.stdout:
            docs, buffer = split_json_stream(buffer + line)
            now = time.monotonic()
            with self.lock:
                for event in docs:
                    pod = event.get("object", {}).get("metadata", {}).get("name")
                    if not pod:
                        continue
                    born, gone = self.lifetimes.get(pod, (now, None))
                    self.lifetimes[pod] = (born, now if event.get("type") == "DELETED" else gone)

    def alive(self):
        with self.lock:
            return sum(gone is None for _, gone in self.lifetimes.values())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        with self.lock:
            return dict(self.lifetimes)


def burst(stack, args, progress):
    """The standard burst: BURST_CALLERS callers calling a 50 ms function (BURST_CONCURRENCY calls
    per pod) back to back for `args.burst_seconds`, from zero, then nothing until it is back at
    zero. Paid: the integral of the gateway's ready pods (`skython_function_ready_pods`) and of
    the pods that exist (Pending to deleted), from the burst's start until no pod is left. Ideal:
    the integral of ceil(calls in flight / concurrency), the calls in flight as the callers see
    them, over the burst. Sampled every 200 ms."""
    name, label = "burst", "admin/burst"
    progress.step("burst: waiting for zero")
    wait_at_zero(stack, name)
    watch = PodWatch(stack.k, name)
    in_flight, lock, stop = [0], threading.Lock(), threading.Event()
    url = f"{stack.url}/fn/admin/{name}"
    results = {"ok": 0, "failed": 0}

    def caller():
        c = Client(url)
        while not stop.is_set():
            with lock:
                in_flight[0] += 1
            status, _ = c.post("{}")
            with lock:
                in_flight[0] -= 1
                results["ok" if status == 200 else "failed"] += 1
        c.close()

    progress.step(f"burst: {BURST_CALLERS} callers for {args.burst_seconds}s, then back to zero")
    samples = []  # (t, calls in flight, ready pods, desired replicas)
    callers = [threading.Thread(target=caller) for _ in range(BURST_CALLERS)]
    start = time.monotonic()
    for t in callers:
        t.start()
    deadline = start + args.burst_seconds
    while True:
        now = time.monotonic()
        m = stack.metrics()
        with lock:
            flying = in_flight[0]
        ready = metric(m, "skython_function_ready_pods", function=label) or 0
        desired = metric(m, "skython_autoscaler_desired_replicas", function=label) or 0
        samples.append((now - start, flying, ready, desired))
        if now >= deadline and not stop.is_set():
            stop.set()
            for t in callers:
                t.join()
            burst_end = time.monotonic() - start
        if stop.is_set() and ready == 0 and watch.alive() == 0:
            break
        if now - start > args.burst_seconds + 120:
            raise SystemExit("the burst's pods were not gone 120 s after it ended")
        time.sleep(max(0.0, SAMPLE_SECONDS - (time.monotonic() - now)))
    end = time.monotonic() - start
    lifetimes = {p: (born - start, gone - start if gone else None) for p, (born, gone) in watch.stop().items()}
    ideal = step_integral([(t, ideal_replicas(f, BURST_CONCURRENCY)) for t, f, _, _ in samples], burst_end)
    return {"seconds": args.burst_seconds, "until_zero": end, "calls": results,
            "ideal_seconds": ideal,
            "ready_seconds": step_integral([(t, r) for t, _, r, _ in samples], end),
            "desired_seconds": step_integral([(t, d) for t, _, _, d in samples], end),
            "pod_seconds": pod_seconds(lifetimes, 0.0, end), "pods": len(lifetimes),
            "peak_ready": max(r for _, _, r, _ in samples),
            "first_ready": next((t for t, _, r, _ in samples if r > 0), None),
            "desired_zero": next((t for t, _, _, d in samples if t > burst_end and d == 0), None),
            "ready_zero": next((t for t, _, r, _ in samples if t > burst_end and r == 0), None)}


# ------------------------------------------------------------------ report

def cold_table(c, title=None):
    title = title or f"with {c['functions']} functions deployed"
    lines = [f"| {title} | seconds |", "|---|---|",
             f"| time to first answer (client) | {fmt(c['seconds'], '', 3)} |"]
    lines += [f"| gateway phase: {p} | {fmt(s, '', 3)} |" for p, s in c["phases"].items()]
    lines.append("| each run (s) | " + ", ".join(f"{r['seconds']:.3f}" for r in c["runs"]) + " |")
    return lines + [""]


def report(args, results, loads, elapsed):
    now = datetime.datetime.now(datetime.timezone.utc)
    binary = Path(args.skython).resolve()
    node = subprocess.run(["kubectl", "--kubeconfig", str(args.kubeconfig), "version", "-o", "json"],
                          capture_output=True, text=True).stdout
    try:
        server = json.loads(node)["serverVersion"]["gitVersion"]
    except (ValueError, KeyError):
        server = "unknown"
    lines = [f"# Skython on the test cluster — {now:%Y-%m-%d %H:%M} UTC", "",
             f"- Kubernetes {server}, one node (this machine, {os.cpu_count()} CPUs); `skython gateway` "
             f"and `skython operator` on the host ({binary}, {'a debug' if '/debug/' in str(binary) else 'a release'} "
             f"build); runner pods from the image `e2e/cluster/up.sh` built; the harness at {git_describe()}",
             f"- 1-minute load average {loads[0]:.2f} before the run, {loads[1]:.2f} after (the "
             "machine is shared: builds and tests running beside the bench move these figures)",
             "- figures: median (min–max); the cold-started `add` has a function's default CPU (1) "
             "and 256Mi, the side measure 100m; the burst's and the other functions ask for 100m and "
             f"128Mi (requests = limits) so that they fit the node; the warm-call pod has "
             f"{args.warm_cpu} CPU", ""]
    lines += ["## Targets", "", "| what | measured | |", "|---|---|---|"]
    for what, measured, met in targets(results):
        verdict = "—" if met is None else "met" if met else "**missed**"
        lines.append(f"| {what} | {measured} | {verdict} |")
    lines.append("")
    if results.get("cold"):
        lines += ["## Time to first answer from zero", "",
                  f"{args.cold_starts} cold starts of a function (`add`) with no pod at all (each after "
                  "its pods were gone, one discarded before them), called through the gateway; "
                  "the phases are the gateway's `skython_pod_cold_start_seconds`, seconds from the "
                  "call to each step (scale written, Pod seen, port open and checked, first answer).", ""]
        lines += cold_table(results["cold"])
    if results.get("cold_many"):
        lines += cold_table(results["cold_many"])
    if results.get("cold_cpu"):
        lines += ["The same function with a 100m CPU limit instead of 1 CPU (11 functions deployed): "
                  "what the CPU quota costs a cold start.", ""]
        lines += cold_table(results["cold_cpu"], "with 100m CPU")
    warm = results.get("warm")
    if warm:
        tool = "wrk" if args.wrk else "Python threads, one keep-alive connection each, every call finished before the run ends"
        lines += ["## Warm calls: through the gateway against the pod directly", "",
                  f"`add` on one pod (concurrency 4), {args.rounds} rounds alternating, 1 s discarded "
                  f"warm-up then {args.seconds} s measured, keep-alive connections ({tool}).", "",
                  "| | concurrency | requests/s | p50 | p99 | errors |", "|---|---|---|---|---|---|"]
        for c in ("c1", "c64"):
            for who in ("direct", "gateway"):
                r = warm[who][c]
                lines.append(f"| {who} | {c[1:]} | {fmt(r['rps'])} | {fmt(r['p50'], ' ms', 3)} | "
                             f"{fmt(r['p99'], ' ms', 3)} | {r['errors']['max']:.0f} |")
        lines += ["", f"- calls the gateway still counted in flight after a run, at most: "
                  f"{warm['left_in_flight']:.0f} (should be 0)", ""]
    b = results.get("burst")
    if b:
        lines += ["## Replica-seconds of the standard burst", "",
                  f"{BURST_CALLERS} callers, each calling again as soon as it has its answer, of a "
                  f"function that sleeps 50 ms (concurrency {BURST_CONCURRENCY} per pod, "
                  f"idleSecondsToZero {BURST_IDLE_SECONDS}), for {b['seconds']} s from zero, with the "
                  "gateway's default windows. Ideal: ∫ ceil(calls in flight / concurrency) over the "
                  "burst (a perfect autoscaler: the pods exactly when needed, none before or after). "
                  "Paid: from the burst's start until no pod is left, sampled every 200 ms.", "",
                  "| | replica-seconds | / ideal |", "|---|---|---|",
                  f"| ideal | {b['ideal_seconds']:.1f} | 1.00× |"]
        for key, what in (("ready_seconds", "ready pods (`skython_function_ready_pods`)"),
                          ("desired_seconds", "desired replicas (`skython_autoscaler_desired_replicas`)"),
                          ("pod_seconds", "pods existing, Pending to deleted (`kubectl get pods --watch`)")):
            lines.append(f"| {what} | {b[key]:.1f} | {b[key] / b['ideal_seconds']:.2f}× |")
        def at(t):
            return f"{t:.1f} s" if t is not None else "never"
        lines += ["", f"- calls: {b['calls']['ok']} answered 200, {b['calls']['failed']} failed; "
                  f"{b['pods']} pods, at most {b['peak_ready']:.0f} ready at once",
                  f"- seconds after the start: the first pod ready {at(b['first_ready'])}; the burst "
                  f"ended {b['seconds']:.1f} s; desired replicas 0 {at(b['desired_zero'])}; no pod "
                  f"ready {at(b['ready_zero'])}; no pod left {at(b['until_zero'])}", ""]
    pool = results.get("pool")
    if pool:
        lines += ["## The warm pool", "",
                  f"A second namespace: the operator keeps {POOL_SIZE} pool pods (100m requested, a 1 CPU limit, 256Mi, refilled at "
                  "2 per second), the gateway claims them. A hit: a function never called (its Deployment "
                  "cannot start: it asks for 8 CPUs), called once a pool pod is claimable, through the "
                  f"gateway, request in to answer out. A miss: {POOL_SIZE} such functions called at once take "
                  "the pool's pods, then one more (a function's default CPU, 1) finds the pool empty "
                  "and waits for its Deployment's pod.", "",
                  "| | median | p99 (nearest rank) | max |", "|---|---|---|---|",
                  f"| pool hit ({len(pool['hits'])}) | {statistics_median(pool['hits']) * 1000:.1f} ms | "
                  f"{percentile(pool['hits'], 99) * 1000:.1f} ms | {max(pool['hits']) * 1000:.1f} ms |"]
        if pool["idle_pss_mib"]:
            lines += ["", "- memory of an idle pool pod (PSS of the runner and its zygote): " +
                      ", ".join(f"{m:.0f} MiB" for m in pool["idle_pss_mib"])]
        lines.append("")
        if pool["misses"]:
            lines += ["Each miss, with the gateway's cold-start phases of the function that missed "
                      "(seconds from the call):", ""]
            lines += cold_table(cold_summary(pool["misses"], None), f"pool miss ({len(pool['misses'])})")
    lines += ["## Reproduce", "",
              "`make cluster-up`, then `make bench-cluster` (`--quick`: fewer repetitions). "
              f"This run took {elapsed:.0f} s{' (--quick)' if args.quick else ''}.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------ main

def interrupted(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skython", required=True, help="the skython binary (gateway and operator)")
    p.add_argument("--python", required=True, help="Python of Skython's runtime venv")
    p.add_argument("--kubeconfig", type=Path,
                   default=Path.home() / ".cache/skython/cluster/admin.kubeconfig")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--quick", action="store_true", help="fewer repetitions, a shorter burst")
    p.add_argument("--if-cluster", action="store_true",
                   help="without a cluster, say why and exit 0 (for `make bench`)")
    p.add_argument("--cold-starts", type=int, help="cold starts per measure (default 10, --quick 3)")
    p.add_argument("--functions", type=int, default=200, help="functions deployed in the second measure")
    p.add_argument("--rounds", type=int, help="warm-call rounds (default 3, --quick 1)")
    p.add_argument("--seconds", type=int, default=3, help="seconds per warm-call run")
    p.add_argument("--burst-seconds", type=int, help="the burst's length (default 30, --quick 10)")
    p.add_argument("--warm-cpu", default="1", help="CPU of the warm-call pod")
    p.add_argument("--pool-only", action="store_true",
                   help="only the warm pool's measures (about 3 minutes; writes cluster-pool.md)")
    p.add_argument("--miss-rounds", type=int, default=POOL_MISS_ROUNDS,
                   help=f"pool misses measured (default {POOL_MISS_ROUNDS})")
    p.add_argument("--wrk", action="store_true",
                   help="warm calls with wrk instead of Python threads. wrk stops with calls in "
                   "flight, and the gateway at 690a0a6 then keeps their pod slots for ever: after "
                   "`concurrency` such calls the pod gets no more calls")
    args = p.parse_args()
    args.cold_starts = args.cold_starts or (3 if args.quick else 10)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.burst_seconds = args.burst_seconds or (10 if args.quick else 30)
    reason = no_cluster_reason(args.kubeconfig)
    if reason:
        msg = f"cluster benchmarks skipped: {reason} (start it with `make cluster-up`)"
        if args.if_cluster:
            print(msg)
            return 0
        raise SystemExit(msg)
    # SIGTERM (and SIGHUP) end the run like Ctrl-C: the namespace and processes are still removed.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    started, load_before = time.monotonic(), loadavg()
    stack = Stack(args)
    results = {}
    cpu_starts = max(3, args.cold_starts // 2)  # a side measure: fewer, to keep the run short
    pool_steps = 1 + POOL_HITS + args.miss_rounds
    progress = Progress(pool_steps if args.pool_only else 7 + 2 * (args.cold_starts + 1) + cpu_starts
                        + 1 + 4 * args.rounds + pool_steps)
    try:
        if not args.pool_only:
            results.update(cluster_without_pool(stack, args, progress, cpu_starts))
        results["pool"] = pool_bench(args, progress)
    except BaseException:
        progress.finish()
        stack.dump_logs()
        raise
    finally:
        stack.stop()
        progress.finish()
    md = report(args, results, (load_before, loadavg()), time.monotonic() - started)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / ("cluster-pool.md" if args.pool_only else "cluster.md")).write_text(md)
    print(md)
    for what, measured, met in targets(results):
        print(f"{'      ' if met is None else 'met   ' if met else 'MISSED'} {what}: {measured}")
    return 0


def cluster_without_pool(stack, args, progress, cpu_starts):
    """Every measure but the pool's, on one gateway and operator (stopped at the end)."""
    results = {}
    progress.step(f"starting the gateway and the operator in {stack.k.namespace}")
    stack.start()
    results["warm"] = warm_overhead(stack, args, progress)
    progress.step("deploying 10 functions")
    stack.k.apply({"apiVersion": "v1", "kind": "List", "items": [
        sky_function("add", ADD, replicas=0, resources=DEFAULT_CPU,
                     scaling={"idleSecondsToZero": 1}),
        sky_function("burst", NAP, replicas=0, concurrency=BURST_CONCURRENCY,
                     scaling={"maxReplicas": 10, "idleSecondsToZero": BURST_IDLE_SECONDS}),
    ] + fillers(0, 8)["items"]})
    wait_deployed(stack, 10)
    results["cold"] = cold_starts(stack, "add", args.cold_starts, 10, progress, "10 functions")
    results["burst"] = burst(stack, args, progress)
    # The same cold start with a 100m limit: what the quota costs.
    progress.step("deploying a function with 100m CPU")
    stack.k.apply(sky_function("add1", ADD.replace("def add", "def add1"), replicas=0,
                               resources=SMALL, scaling={"idleSecondsToZero": 1}))
    wait_deployed(stack, 11)
    results["cold_cpu"] = cold_starts(stack, "add1", cpu_starts, 11, progress, "100m CPU")
    stack.k.run("delete", "skyfunction", "add1", "--wait=true")
    progress.step(f"deploying {args.functions - 10} more functions")
    stack.k.apply(fillers(8, args.functions - 10))
    wait_deployed(stack, args.functions)
    results["cold_many"] = cold_starts(stack, "add", args.cold_starts, args.functions, progress,
                                       f"{args.functions} functions")
    progress.step("cleaning up")
    stack.stop()
    return results


if __name__ == "__main__":
    sys.exit(main())
