"""`skython.caller()` over a real worker channel: the identity the gateway sends (`I`) before a
call is the one that call sees, in the order calls arrive."""

import json
import socket
import threading
import unittest

import skython
from skython import caller, load
from skython_runtime.protocol import CALL, CALLER, ERROR, OK, STATE_ANS, STATE_REQ, Channel
from skython_runtime.worker import Worker

ALICE = {"kind": "user", "name": "alice"}
BOB_KEY = {"kind": "key", "id": "key_1", "owner": "bob", "name": "my-app"}
ANONYMOUS = {"kind": "anonymous"}


class OutsideACall(unittest.TestCase):
    def test_outside_skython_the_caller_is_anonymous(self):
        self.assertIsNone(skython._worker)
        self.assertEqual(caller(), ANONYMOUS)

    def test_it_is_in_the_librarys_exports(self):
        self.assertIn("caller", skython.__all__)


class Serving(unittest.TestCase):
    """A worker serving calls (in a thread) on a socketpair; the test is the gateway."""

    def setUp(self):
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        ours.settimeout(5)  # an answer that never comes fails the test instead of hanging it
        self.chan = Channel(ours)
        self.worker = Worker(Channel(theirs), {})
        self.worker.fn = caller
        skython._worker = self.worker
        self.addCleanup(setattr, skython, "_worker", None)
        serving = threading.Thread(target=self.worker.serve)
        serving.start()
        self.addCleanup(serving.join, 5)
        self.addCleanup(self.chan.sock.shutdown, socket.SHUT_RDWR)  # serve returns

    def result(self):
        """The decoded answer of the next call (past any `G` or `U`)."""
        while True:
            kind, payload = self.chan.recv()
            if kind in (OK, ERROR):
                self.assertEqual(kind, OK, bytes(payload))
                return json.loads(payload)

    def call_as(self, who):
        if who is not None:
            self.chan.queue_json(CALLER, who)
        self.chan.queue(CALL, b"{}")
        self.chan.flush()
        return self.result()

    def test_a_worker_told_no_caller_says_anonymous(self):
        self.assertEqual(self.call_as(None), ANONYMOUS)

    def test_a_call_sees_the_identity_sent_before_it_and_the_calls_after_keep_it(self):
        self.assertEqual(self.call_as(ALICE), ALICE)
        self.assertEqual(self.call_as(None), ALICE, "only a change is sent")
        self.assertEqual(self.call_as(BOB_KEY), BOB_KEY)
        self.assertEqual(self.call_as(ANONYMOUS), ANONYMOUS)

    def test_a_change_to_the_returned_dict_does_not_reach_the_next_call(self):
        def meddle():
            who = caller()
            who["name"] = "mallory"
            who["kind"] = "admin"
            return caller()

        self.worker.fn = meddle
        self.assertEqual(self.call_as(ALICE), ALICE)
        self.worker.fn = caller
        self.assertEqual(self.call_as(None), ALICE)

    def test_pipelined_calls_each_see_their_own_caller(self):
        for who in (ALICE, BOB_KEY, ANONYMOUS, ALICE):
            self.chan.queue_json(CALLER, who)
            self.chan.queue(CALL, b"{}")
        self.chan.flush()  # one write: the worker reads them together
        self.assertEqual([self.result() for _ in range(4)], [ALICE, BOB_KEY, ANONYMOUS, ALICE])

    def test_an_identity_arriving_during_a_state_request_waits_for_its_call(self):
        def load_then_tell():
            load("k")
            return caller()

        self.worker.fn = load_then_tell
        self.chan.queue_json(CALLER, ALICE)
        self.chan.queue(CALL, b"{}")
        self.chan.flush()
        kind, _ = self.chan.recv()
        self.assertEqual(kind, STATE_REQ)
        # The next call, and who it is for, arrive while the first waits for its answer.
        self.chan.queue_json(CALLER, BOB_KEY)
        self.chan.queue(CALL, b"{}")
        self.chan.queue_json(STATE_ANS, {"ok": True, "found": False})
        self.chan.flush()
        self.assertEqual(self.result(), ALICE)
        kind, _ = self.chan.recv()
        self.assertEqual(kind, STATE_REQ)
        self.chan.send_json(STATE_ANS, {"ok": True, "found": False})
        self.assertEqual(self.result(), BOB_KEY)


if __name__ == "__main__":
    unittest.main()
