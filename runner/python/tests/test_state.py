"""The `skython` state library over a real worker channel: what each call sends, what it makes of
the answer, and how a call that lost its storage is reported."""

import json
import socket
import unittest

import skython
from skython import StateError, StateUnavailable, incr, load, store
from skython_runtime.protocol import ERROR, STATE_ANS, STATE_REQ, Channel
from skython_runtime.worker import Worker


class Gateway(unittest.TestCase):
    """A worker whose state requests this test answers, as the gateway would, on a socketpair."""

    def setUp(self):
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        self.chan = Channel(ours)
        self.worker = Worker(Channel(theirs), {"maxStateValueBytes": 100})
        skython._worker = self.worker
        self.addCleanup(setattr, skython, "_worker", None)

    def answer(self, **answer):
        """Queues the gateway's answer to the next state request (the socket holds it)."""
        self.chan.send_json(STATE_ANS, answer)

    def request(self):
        """The state request the worker sent."""
        kind, payload = self.chan.recv()
        self.assertEqual(kind, STATE_REQ)
        return json.loads(payload)

    def nothing_sent(self):
        self.chan.sock.setblocking(False)
        with self.assertRaises(BlockingIOError):
            self.chan.sock.recv(1)


class Incr(Gateway):
    def test_sends_the_numbers_and_returns_the_new_value(self):
        self.answer(ok=True, value="42")
        self.assertEqual(incr("visits", by=2, default=40), 42)
        self.assertEqual(self.request(),
                         {"op": "incr", "key": "visits", "by": 2, "default": 40})

    def test_defaults_to_adding_one_to_zero(self):
        self.answer(ok=True, value="1")
        incr("n")
        self.assertEqual(self.request(), {"op": "incr", "key": "n", "by": 1, "default": 0})

    def test_a_float_sum_comes_back_a_float(self):
        self.answer(ok=True, value="1.5")
        self.assertEqual(incr("n", 0.5), 1.5)
        self.assertEqual(self.request()["by"], 0.5)

    def test_a_bool_is_not_a_number_here(self):
        for args in ({"by": True}, {"default": False}):
            with self.subTest(args), self.assertRaisesRegex(TypeError, "int or a float, not bool"):
                incr("n", **args)
        self.nothing_sent()

    def test_other_types_are_refused_naming_the_argument(self):
        with self.assertRaisesRegex(TypeError, "incr's by must be an int or a float, not str"):
            incr("n", "1")
        with self.assertRaisesRegex(TypeError, "incr's default must be .* not NoneType"):
            incr("n", default=None)
        self.nothing_sent()

    def test_numbers_json_cannot_hold_or_past_64_bits_are_refused(self):
        for by in (float("nan"), float("inf"), 2**63, -(2**63) - 1):
            with self.subTest(by), self.assertRaises(ValueError):
                incr("n", by)
        self.nothing_sent()

    def test_a_non_number_under_the_key_raises_the_stores_message(self):
        message = 'incr needs a number under "n", found a string'
        self.answer(ok=False, error={"code": "invalid_write", "message": message})
        with self.assertRaises(StateError) as raised:
            incr("n")
        self.assertEqual(str(raised.exception), message)
        self.assertNotIsInstance(raised.exception, StateUnavailable)

    def test_keys_are_checked_first(self):
        with self.assertRaises(TypeError):
            incr(1)
        with self.assertRaises(StateError):
            incr("")
        self.nothing_sent()


class CompareAndSet(Gateway):
    def test_plain_store_sends_no_expectation_and_returns_none(self):
        self.answer(ok=True)
        self.assertIsNone(store("k", [1, 2]))
        self.assertEqual(self.request(), {"op": "store", "key": "k", "value": "[1,2]"})

    def test_expect_is_sent_as_json_and_the_answer_says_who_won(self):
        self.answer(ok=True, won=True)
        self.assertIs(store("k", 2, expect={"a": 1}), True)
        self.assertEqual(self.request(),
                         {"op": "store", "key": "k", "value": "2", "expect": '{"a":1}'})
        self.answer(ok=True, won=False)
        self.assertIs(store("k", 3, expect=2), False)

    def test_expecting_none_is_an_expectation(self):
        self.answer(ok=True, won=True)
        store("k", 1, expect=None)
        self.assertEqual(self.request()["expect"], "null")

    def test_an_unencodable_expectation_is_refused_before_sending(self):
        with self.assertRaisesRegex(StateError, "the expected value contains a builtins.object"):
            store("k", 1, expect=object())
        self.nothing_sent()


class Unavailable(Gateway):
    def test_a_state_unavailable_answer_raises_state_unavailable(self):
        self.answer(ok=False, error={"code": "state_unavailable", "message": "unreachable"})
        with self.assertRaisesRegex(StateUnavailable, "unreachable") as raised:
            load("k")
        self.assertIsInstance(raised.exception, StateError, "caught by `except StateError`")

    def test_other_refusals_are_plain_state_errors(self):
        self.answer(ok=False, error={"code": "quota_exceeded", "message": "full"})
        with self.assertRaises(StateError) as raised:
            store("k", 1)
        self.assertNotIsInstance(raised.exception, StateUnavailable)

    def test_a_call_that_lets_it_escape_is_state_unavailable_with_its_traceback(self):
        def counter():
            return incr("n")

        self.worker.fn = counter
        self.answer(ok=False, error={"code": "state_unavailable", "message": "no storage"})
        kind, err = self.worker.call(b"{}")
        self.assertEqual(kind, ERROR)
        self.assertEqual((err["code"], err["type"]), ("state_unavailable", "StateUnavailable"))
        self.assertEqual(
            err["message"], "the call could not use its state: no storage; try again later")
        self.assertIn("return incr(\"n\")", err["traceback"])
        self.assertIn(err["traceback"], self.worker.capture.take(), "kept in the call's logs")

    def test_other_state_errors_stay_function_errors(self):
        def counter():
            return incr("n")

        self.worker.fn = counter
        self.answer(ok=False, error={"code": "quota_exceeded", "message": "full"})
        _, err = self.worker.call(b"{}")
        self.assertEqual((err["code"], err["type"]), ("function_error", "StateError"))


if __name__ == "__main__":
    unittest.main()
