"""The zygote as the gateway runs it (`python -m skython_runtime`, control socket on fd 3):
a request that fails, for whatever reason, fails alone."""

import json
import os
import socket
import subprocess
import sys
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

    def inspect(self, source, **more):
        kind, answer = self.request(INSPECT, {"source": source, "filename": "f.py", **more})
        assert kind == INSPECT, (kind, answer)
        return json.loads(answer)

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


class HostileSources(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.zygote = Zygote()

    @classmethod
    def tearDownClass(cls):
        cls.zygote.close()

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


class AnswerDeadline(unittest.TestCase):
    def test_a_child_that_overruns_its_time_is_killed_and_has_no_answer(self):
        r, w = os.pipe()
        child = subprocess.Popen(["sleep", "30"], pass_fds=[w])
        os.close(w)
        started = time.monotonic()
        self.assertIsNone(zygote._read_answer(r, child.pid, 0.2))
        self.assertEqual(child.wait(5), -9)
        self.assertLess(time.monotonic() - started, 5)

    def test_what_a_child_wrote_before_it_exited_is_its_answer(self):
        r, w = os.pipe()
        child = subprocess.Popen(["echo", "-n", "{}"], stdout=w)
        os.close(w)
        self.assertEqual(zygote._read_answer(r, child.pid, inspection.WALL_SECONDS), b"{}")
        child.wait()


if __name__ == "__main__":
    unittest.main()
