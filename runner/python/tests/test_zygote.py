"""The zygote as the gateway runs it (`python -m skython_runtime`, control socket on fd 3):
a request that fails, for whatever reason, fails alone."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import unittest

from skython_runtime import inspection, zygote
from skython_runtime.protocol import (
    CALL, FAILED, GO, HELLO, INSPECT, LOG, OK, RAN, READY, SPAWN, SPAWNED, STARTED, Channel)


class Zygote:
    """A zygote that preloads nothing, driven over its control socket."""

    def __init__(self):
        ours, theirs = socket.socketpair()
        env = {"PYTHONPATH": ":".join(sys.path), "SKYTHON_PRELOAD": "",
               "PYTHONDONTWRITEBYTECODE": "1"}
        # The shell moves the socket to fd 3, where the gateway puts it.
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", f'exec "$0" -m skython_runtime 3<&{theirs.fileno()}', sys.executable],
            env=env, pass_fds=[theirs.fileno()])
        theirs.close()
        self.ctl = Channel(ours)
        kind, hello = self.ctl.recv()
        assert kind == HELLO, kind
        self.pid = json.loads(hello)["pid"]

    def request(self, kind, body, fd=None):
        payload = json.dumps(body).encode() if not isinstance(body, bytes) else body
        header = len(payload).to_bytes(4, "little") + kind
        if fd is None:
            self.ctl.sock.sendall(header + payload)
        else:
            socket.send_fds(self.ctl.sock, [header + payload], [fd])
        return self.ctl.recv()

    def start_inspection(self, source, **more):
        """Sends an inspection as the gateway does: the control answer, and our end of the
        socket the verdict comes on (None if the zygote answered on the control channel)."""
        ours, theirs = socket.socketpair()
        kind, answer = self.request(
            INSPECT, {"source": source, "filename": "f.py", **more}, theirs.fileno())
        theirs.close()
        if kind != SPAWNED:
            ours.close()
            return kind, json.loads(answer), None
        return kind, json.loads(answer), Channel(ours)

    def inspect(self, source, **more):
        """The verdict on `source`."""
        kind, answer, child = self.start_inspection(source, **more)
        if child is None:
            assert kind == INSPECT, (kind, answer)
            return answer
        with child.sock:
            kind, verdict = child.recv()
        assert kind == INSPECT, (kind, verdict)
        return json.loads(verdict)

    def spawn(self, source):
        """A worker for `source` (entry function `main`), loaded and ready: its channel."""
        ours, theirs = socket.socketpair()
        spec = {"label": "t/f", "source": source, "filename": "f.py", "entrypoint": "main",
                "env": {}, "maxResultBytes": 1 << 20, "maxLogBytes": 1024,
                "maxStateValueBytes": 1024}
        kind, _ = self.request(SPAWN, spec, theirs.fileno())
        theirs.close()
        assert kind == SPAWNED, kind
        worker = Channel(ours)
        assert worker.recv()[0] == STARTED
        worker.queue(GO)
        worker.flush()
        kind, ready = worker.recv()
        assert kind == READY, (kind, ready)
        return worker

    def alive(self):
        return self.proc.poll() is None

    def close(self):
        self.ctl.sock.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def call(worker, args=b"{}"):
    """The worker's answer to one call (after its optional log and timing frames)."""
    worker.queue(CALL, args)
    worker.flush()
    kind, out = worker.recv()
    while kind in (LOG, RAN):
        kind, out = worker.recv()
    assert kind == OK, (kind, out)
    return json.loads(out)


HOSTILE = {
    "binary operators": "x = " + "1+" * 300000 + "1\ndef main(): return 1\n",
    "unary operators": "x = " + "-" * 300000 + "1\ndef main(): return 1\n",
}


class WithZygote(unittest.TestCase):
    """One zygote for the class's tests."""

    @classmethod
    def setUpClass(cls):
        cls.zygote = Zygote()

    @classmethod
    def tearDownClass(cls):
        cls.zygote.close()


class HostileSources(WithZygote):
    def test_hostile_sources_fail_alone_and_a_warm_worker_keeps_its_pid(self):
        worker = self.zygote.spawn("import os\ndef main(): return os.getpid()\n")
        self.addCleanup(worker.sock.close)
        pid = call(worker)
        for name, source in HOSTILE.items():
            with self.subTest(name):
                answer = self.zygote.inspect(source)
                self.assertEqual(answer["error"]["code"], "source_too_deeply_nested", answer)
        self.assertTrue(self.zygote.alive())
        self.assertEqual(call(worker), pid, "the same worker answers")
        self.assertTrue(self.zygote.inspect("def main(): return 1\n")["ok"])

    def test_a_source_over_the_gateways_limit_is_refused_before_parsing(self):
        answer = self.zygote.inspect("def main(): return 1\n", maxSourceBytes=10)
        self.assertEqual(answer["error"]["code"], "source_too_large")
        self.assertIn("more than the limit of 10 bytes", answer["error"]["message"])

    def test_a_malformed_request_is_answered_with_a_failure(self):
        kind, answer = self.zygote.request(INSPECT, b"{not json")
        self.assertEqual(kind, FAILED)
        self.assertIn("JSONDecodeError", json.loads(answer)["message"])
        kind, answer = self.zygote.request(SPAWN, {"source": "def main(): pass\n"})
        self.assertEqual(kind, FAILED, "a spawn without a socket")
        kind, answer = self.zygote.request(b"?", {})
        self.assertEqual((kind, json.loads(answer)), (FAILED, {"message": "unknown request b'?'"}))
        self.assertTrue(self.zygote.alive())
        self.assertTrue(self.zygote.inspect("def main(): return 1\n")["ok"])

    def test_an_answer_in_a_lone_surrogate_is_still_utf8(self):
        answer = self.zygote.inspect("def main():\n    '\\ud800'\n")
        self.assertEqual(answer["signature"]["doc"], "\ufffd")


class InspectionChild(WithZygote):
    """An inspection is a child that answers on its own socket: the zygote does not wait for
    it, and it does not outlive its limits."""

    def test_a_slow_inspection_holds_the_control_channel_no_longer_than_a_fork(self):
        # Seconds of parsing and compiling, well within the limits.
        started = time.monotonic()
        kind, answer, child = self.zygote.start_inspection("a\n" * 300000 + "def main(): pass\n")
        self.addCleanup(child.sock.close)
        self.assertEqual(kind, SPAWNED)
        self.assertEqual(answer["deadlineSeconds"], inspection.WALL_SECONDS)
        self.assertEqual(answer["unanswered"], inspection.too_complex())
        worker = self.zygote.spawn("def main(): return 7\n")
        self.addCleanup(worker.sock.close)
        self.assertEqual(call(worker), 7)
        served = time.monotonic() - started
        kind, verdict = child.recv()
        inspected = time.monotonic() - started
        self.assertEqual((kind, json.loads(verdict)["ok"]), (INSPECT, True))
        self.assertLess(served, inspected / 2, "a worker was served during the inspection")

    def test_an_inspection_child_is_reaped_once_it_answered(self):
        kind, answer, child = self.zygote.start_inspection("def main(): pass\n")
        with child.sock:
            self.assertEqual(child.recv()[0], INSPECT)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.kill(answer["pid"], 0)  # a zombie would still be there
            except ProcessLookupError:
                return
            time.sleep(0.01)
        self.fail(f"the inspection child {answer['pid']} is still there")

    def test_an_inspection_without_a_socket_is_refused(self):
        kind, answer = self.zygote.request(INSPECT, {"source": "def main(): pass\n",
                                                     "filename": "f.py"})
        self.assertEqual((kind, json.loads(answer)),
                         (FAILED, {"message": "expected one socket, got 0"}))

    def test_the_inspection_child_ends_at_its_own_deadline(self):
        # Whatever it is blocked in: an alarm whose default action ends it.
        script = textwrap.dedent("""
            import signal
            from skython_runtime import zygote
            zygote._limit_inspector()
            print(signal.getsignal(signal.SIGALRM) == signal.SIG_DFL, signal.alarm(0))
        """)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             check=True, env={"PYTHONPATH": ":".join(sys.path)})
        self.assertEqual(out.stdout.split(), ["True", str(inspection.WALL_SECONDS)])


if __name__ == "__main__":
    unittest.main()
