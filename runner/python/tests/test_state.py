"""The `skython` state library over a real worker channel: what each call sends, what it makes of
the answer, and how a call that lost its storage is reported."""

import json
import socket
import threading
import time
import unittest

import skython
from skython import StateError, StateUnavailable, delete, incr, keys, load, store
from skython_runtime.protocol import (
    CALL, ERROR, OK, STATE_ANS, STATE_PUSH, STATE_REQ, STATE_WRITE, Channel)
from skython_runtime.state_cache import CACHE_MAX_BYTES, CACHE_MAX_KEYS, CACHE_VALUE_MAX
from skython_runtime.worker import Worker


class Gateway(unittest.TestCase):
    """A worker whose state requests this test answers, as the gateway would, on a socketpair."""

    spec = {"maxStateValueBytes": 100}

    def setUp(self):
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        ours.settimeout(5)  # a request that never comes fails the test instead of hanging it
        self.chan = Channel(ours)
        self.worker = Worker(Channel(theirs), dict(self.spec))
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

    def frame(self, kind):
        """The next frame the worker sent, which must be of `kind`, decoded."""
        got, payload = self.chan.recv()
        self.assertEqual(got, kind)
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

    def test_an_empty_body_calls_without_arguments_and_bad_json_is_bad_json(self):
        self.worker.fn = lambda: "none"
        self.assertEqual(self.worker.call(b" "), (OK, b'"none"'))
        kind, err = self.worker.call(b"{")
        self.assertEqual((kind, err["code"]), (ERROR, "bad_json"))

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


class WithoutCache(Gateway):
    def test_a_plain_store_is_a_round_trip(self):
        self.answer(ok=True)
        store("k", 1)
        self.assertEqual(self.request(), {"op": "store", "key": "k", "value": "1"})
        self.nothing_sent()

    def test_every_load_asks(self):
        for _ in range(2):
            self.answer(ok=True, found=True, value="1")
            self.assertEqual(load("k"), 1)
            self.assertEqual(self.request(), {"op": "load", "key": "k"})


class Cached(Gateway):
    """A worker that caches state (the gateway is its only writer) and pushes this test sends."""

    spec = {"stateCache": True, "maxStateValueBytes": 100_000}

    def setUp(self):
        super().setUp()
        # Every plain store goes behind here: these tests are about the cache and write-behind;
        # which stores may go behind is `StoresThatMayGrow`'s.
        self.worker.cache.cannot_grow = lambda key, size: True

    def push(self, **push):
        self.chan.send_json(STATE_PUSH, push)

    def push_taken(self, **push):
        """A push that the worker takes in now (as a load would), before any answer is queued."""
        self.push(**push)
        self.worker.chan.receive_arrived()
        self.worker.cache.drain()

    def cached_load(self, key, text):
        """Loads `key` once, answered with `text`: it is in the cache after."""
        self.answer(ok=True, found=True, value=text)
        load(key)
        self.request()


class StoresThatMayGrow(Cached):
    """Only a store that cannot grow the owner's state goes behind: any other waits for its
    answer, so a store past the quota raises in the call."""

    def setUp(self):
        super().setUp()
        del self.worker.cache.cannot_grow  # the real rule

    def test_a_store_of_a_key_the_worker_does_not_hold_waits_and_raises_a_refusal(self):
        self.answer(ok=False, error={"code": "quota_exceeded", "message": "state quota exceeded"})
        with self.assertRaisesRegex(StateError, "state quota exceeded"):
            store("k", 1)
        self.assertEqual(self.request(), {"op": "store", "key": "k", "value": "1"})

    def test_a_value_no_longer_than_the_one_held_goes_behind(self):
        self.cached_load("k", '"abc"')
        store("k", "xyz")
        self.assertEqual(self.frame(STATE_WRITE), {"key": "k", "value": '"xyz"'})

    def test_a_longer_value_waits_for_its_answer(self):
        self.cached_load("k", "1")
        self.answer(ok=True)
        store("k", 10)
        self.assertEqual(self.request(), {"op": "store", "key": "k", "value": "10"})

    def test_lengths_compare_in_bytes_of_utf8(self):
        self.cached_load("k", '"é"')  # 4 bytes, 3 characters
        self.answer(ok=True)
        store("k", "ab")  # 4 bytes: fits
        self.assertEqual(self.frame(STATE_WRITE), {"key": "k", "value": '"ab"'})
        store("k", "abc")  # 5 bytes: may grow
        self.assertEqual(self.request(), {"op": "store", "key": "k", "value": '"abc"'})

    def test_a_known_absence_is_not_room_to_write_behind(self):
        self.answer(ok=True, found=False)
        load("k")
        self.request()
        self.answer(ok=True)
        store("k", 1)
        self.assertEqual(self.request(), {"op": "store", "key": "k", "value": "1"})


class WriteBehind(Cached):
    def test_a_plain_store_sends_a_write_and_waits_for_no_answer(self):
        self.assertIsNone(store("k", [1, 2]))
        self.assertEqual(self.frame(STATE_WRITE), {"key": "k", "value": "[1,2]"})
        self.nothing_sent()

    def test_a_write_behind_held_answers_goes_out_with_them(self):
        self.worker.chan.queue(OK, b"1")  # a held answer of an earlier call
        store("k", 2)
        self.nothing_sent()
        self.chan.sock.settimeout(5)
        self.worker.chan.flush()
        self.assertEqual(self.chan.recv(), (OK, bytearray(b"1")))
        self.assertEqual(self.frame(STATE_WRITE), {"key": "k", "value": "2"})

    def test_a_write_of_a_call_whose_answer_will_be_held_waits_for_that_answer(self):
        self.worker.chan.batching = True  # more short calls are waiting behind this one
        store("k", 2)
        self.nothing_sent()
        self.worker.chan.queue(OK, b"2")
        self.worker.chan.flush()
        self.chan.sock.settimeout(5)
        self.assertEqual(self.frame(STATE_WRITE), {"key": "k", "value": "2"})
        self.assertEqual(self.chan.recv(), (OK, bytearray(b"2")))

    def test_values_over_the_limit_are_refused_before_sending(self):
        self.worker.spec["maxStateValueBytes"] = 10
        with self.assertRaisesRegex(StateError, "more than the limit of 10 bytes"):
            store("k", "x" * 20)
        self.nothing_sent()

    def test_a_store_with_expect_stays_a_round_trip(self):
        self.answer(ok=True, won=True)
        self.assertIs(store("k", 2, expect=1), True)
        self.assertEqual(self.request(), {"op": "store", "key": "k", "value": "2", "expect": "1"})


class Loads(Cached):
    def test_a_load_after_its_own_store_is_answered_from_the_cache(self):
        store("k", {"a": 1})
        self.frame(STATE_WRITE)
        self.assertEqual(load("k"), {"a": 1})
        self.nothing_sent()

    def test_a_second_load_of_a_loaded_key_sends_nothing(self):
        self.answer(ok=True, found=True, value="[1]")
        self.assertEqual(load("k"), [1])
        self.assertEqual(self.request(), {"op": "load", "key": "k"})
        self.assertEqual(load("k"), [1])
        self.nothing_sent()

    def test_a_load_of_a_missing_key_caches_the_absence(self):
        self.answer(ok=True, found=False)
        self.assertEqual(load("k", 5), 5)
        self.request()
        self.assertEqual(load("k", 7), 7)
        self.nothing_sent()

    def test_values_not_in_compact_json_still_decode(self):
        for text, value in ((' {"a": [1, 2]} ', {"a": [1, 2]}), ("1.0", 1.0), ('"é"', "é")):
            self.answer(ok=True, found=True, value=text)
            self.assertEqual(load(text), value)
            self.request()
            self.assertEqual(load(text), value)

    def test_loads_return_fresh_copies(self):
        store("l", [1])
        store("d", {"a": 1})
        load("l").append(2)
        load("d")["b"] = 2
        self.assertEqual((load("l"), load("d")), ([1], {"a": 1}))

    def test_a_value_over_16_kib_is_not_cached(self):
        big = "x" * CACHE_VALUE_MAX
        store("k", big)  # 2 characters more as JSON
        self.frame(STATE_WRITE)
        self.answer(ok=True, found=True, value=json.dumps(big))
        self.assertEqual(load("k"), big)
        self.request()
        self.answer(ok=True, found=True, value=json.dumps(big))
        load("k")
        self.request()

    def test_a_value_of_16_kib_is_cached(self):
        store("k", "x" * (CACHE_VALUE_MAX - 2))
        self.frame(STATE_WRITE)
        load("k")
        self.nothing_sent()

    def test_the_cached_text_stays_within_its_byte_budget_the_oldest_dropped(self):
        text = '"' + "x" * (CACHE_VALUE_MAX - 16) + '"'
        keys = [f"k{i}" for i in range(2 * CACHE_MAX_BYTES // CACHE_VALUE_MAX)]
        for key in keys:
            self.worker.cache.put(key, text)  # as loads and pushes do
        values = self.worker.cache.values
        self.assertLessEqual(sum(len(t) for t in values.values()), CACHE_MAX_BYTES)
        self.assertIn(keys[-1], values)
        self.assertNotIn(keys[0], values)

    def test_at_most_4096_keys_are_kept_the_oldest_dropped(self):
        for i in range(CACHE_MAX_KEYS + 1):
            self.worker.cache.settle(f"k{i}", "1")
        self.assertEqual(len(self.worker.cache.values), CACHE_MAX_KEYS)
        self.assertNotIn("k0", self.worker.cache.values)
        self.assertIn("k1", self.worker.cache.values)

    def test_a_refused_load_caches_nothing(self):
        self.answer(ok=False, error={"code": "state_unavailable", "message": "down"})
        with self.assertRaises(StateUnavailable):
            load("k")
        self.request()
        self.answer(ok=True, found=True, value="1")
        self.assertEqual(load("k"), 1)
        self.request()


class RoundTripWrites(Cached):
    def test_incr_caches_the_new_value(self):
        self.answer(ok=True, value="3")
        incr("n")
        self.request()
        self.assertEqual(load("n"), 3)
        self.nothing_sent()

    def test_a_won_compare_and_set_caches_the_value(self):
        self.answer(ok=True, won=True)
        store("k", [2], expect=None)
        self.request()
        self.assertEqual(load("k"), [2])
        self.nothing_sent()

    def test_a_lost_compare_and_set_drops_the_key(self):
        store("k", 1)
        self.frame(STATE_WRITE)
        self.answer(ok=True, won=False)
        store("k", 2, expect=0)
        self.request()
        self.answer(ok=True, found=True, value="9")
        self.assertEqual(load("k"), 9)
        self.request()

    def test_delete_caches_the_absence(self):
        store("k", 1)
        self.frame(STATE_WRITE)
        self.answer(ok=True, found=True)
        self.assertIs(delete("k"), True)
        self.request()
        self.assertEqual(load("k", "none"), "none")
        self.nothing_sent()

    def test_keys_leaves_the_cache_alone(self):
        store("k", 1)
        self.frame(STATE_WRITE)
        self.answer(ok=True, keys=["k"])
        self.assertEqual(keys(), ["k"])
        self.request()
        self.assertEqual(load("k"), 1)
        self.nothing_sent()


class Pushes(Cached):
    def test_a_push_for_a_cached_key_updates_it(self):
        self.cached_load("k", "1")
        self.push(key="k", value="2", acked=0)
        self.assertEqual(load("k"), 2)
        self.nothing_sent()

    def test_a_push_for_a_key_known_absent_updates_it(self):
        self.answer(ok=True, found=False)
        load("k")
        self.request()
        self.push(key="k", value="2", acked=0)
        self.assertEqual(load("k"), 2)
        self.nothing_sent()

    def test_a_push_for_an_uncached_key_is_ignored(self):
        self.push_taken(key="k", value="2", acked=0)
        self.answer(ok=True, found=True, value="3")
        self.assertEqual(load("k"), 3)
        self.request()

    def test_a_push_older_than_an_own_write_in_flight_is_ignored(self):
        store("k", 1)
        self.push(key="k", value="2", acked=0)
        self.assertEqual(load("k"), 1)

    def test_a_push_after_the_own_write_was_committed_applies(self):
        store("other", 0)
        store("k", 1)  # write 2
        self.push(key="k", value="2", acked=2)
        self.assertEqual(load("k"), 2)

    def test_a_push_before_the_last_own_write_of_the_key_is_ignored(self):
        store("k", 1)
        store("k", 3)  # write 2
        self.push(key="k", value="2", acked=1)
        self.assertEqual(load("k"), 3)

    def test_a_key_whose_own_write_is_no_longer_remembered_leaves_the_cache(self):
        store("k", 1)  # write 1, still in flight as far as the worker knows
        self.frame(STATE_WRITE)
        for i in range(CACHE_MAX_KEYS):  # as many other keys written, none of them cached
            store(f"k{i}", 0)
            self.frame(STATE_WRITE)
            self.worker.cache.forget(f"k{i}")
        self.push_taken(key="k", value="2", acked=0)  # older than write 1, which is forgotten
        self.answer(ok=True, found=True, value="1")
        self.assertEqual(load("k"), 1)
        self.request()

    def test_a_pushed_value_over_16_kib_drops_the_key(self):
        self.cached_load("k", "1")
        big = json.dumps("x" * CACHE_VALUE_MAX)
        self.push_taken(key="k", value=big, acked=0)
        self.answer(ok=True, found=True, value=big)
        load("k")
        self.request()

    def test_forget_drops_the_key(self):
        self.cached_load("k", "1")
        self.cached_load("j", "1")
        self.push_taken(key="k")
        self.answer(ok=True, found=True, value="2")
        self.assertEqual(load("k"), 2)
        self.request()
        self.assertEqual(load("j"), 1)
        self.nothing_sent()

    def test_reset_drops_every_key(self):
        self.cached_load("k", "1")
        self.cached_load("j", "1")
        self.push_taken(reset=True)
        for key in ("k", "j"):
            self.answer(ok=True, found=True, value="2")
            self.assertEqual(load(key), 2)
            self.request()

    def test_a_push_during_a_load_of_the_key_leaves_the_answer_uncached(self):
        self.push(key="k", value="1", acked=0)
        self.answer(ok=True, found=True, value="2")
        self.assertEqual(load("k"), 2)
        self.request()
        self.answer(ok=True, found=True, value="3")
        self.assertEqual(load("k"), 3)
        self.request()

    def test_a_reset_during_a_round_trip_leaves_the_answer_uncached(self):
        self.push(reset=True)
        self.answer(ok=True, value="1")
        incr("n")
        self.request()
        self.answer(ok=True, found=True, value="5")
        self.assertEqual(load("n"), 5)
        self.request()

    def test_a_push_of_another_key_during_a_load_does_not_matter(self):
        self.push(key="j", value="1", acked=0)
        self.cached_load("k", "2")
        self.assertEqual(load("k"), 2)
        self.nothing_sent()

    def test_calls_arriving_during_a_round_trip_are_kept_around_pushes(self):
        self.chan.queue(CALL, b"[1]")
        self.chan.queue_json(STATE_PUSH, {"key": "k"})
        self.chan.queue(CALL, b"[2]")
        self.chan.queue_json(STATE_ANS, {"ok": True, "found": False})
        self.chan.flush()
        load("k")
        self.assertEqual(list(self.worker.chan.deferred),
                         [(CALL, bytearray(b"[1]")), (CALL, bytearray(b"[2]"))])


class Drain(Cached):
    def test_a_push_sent_while_a_call_runs_is_seen_by_its_next_load(self):
        def poll():
            first = load("k")
            self.push(key="k", value="2", acked=0)
            return [first, load("k")]

        self.worker.fn = poll
        self.answer(ok=True, found=True, value="1")
        self.assertEqual(self.worker.call(b"{}"), (OK, b"[1,2]"))
        self.request()
        self.nothing_sent()

    def test_calls_it_finds_are_kept_in_order_and_a_partial_frame_stays(self):
        self.cached_load("k", "1")
        self.chan.queue(CALL, b"[1]")
        self.chan.queue_json(STATE_PUSH, {"key": "k", "value": "2", "acked": 0})
        self.chan.queue(CALL, b"[2]")
        self.chan.flush()
        self.chan.sock.sendall(b"\x03\x00\x00\x00C[3")  # the start of a third call
        self.assertEqual(load("k"), 2)
        chan = self.worker.chan
        self.assertEqual(list(chan.deferred),
                         [(CALL, bytearray(b"[1]")), (CALL, bytearray(b"[2]"))])
        self.chan.sock.sendall(b"]")
        self.assertEqual([chan.recv() for _ in range(3)],
                         [(CALL, bytearray(b"[1]")), (CALL, bytearray(b"[2]")),
                          (CALL, bytearray(b"[3]"))])


class Serving(Cached):
    """Pushes that arrive between calls, read by the worker's serve loop (in a thread)."""

    def setUp(self):
        super().setUp()
        self.worker.fn = lambda: load("k")
        serving = threading.Thread(target=self.worker.serve)
        serving.start()
        self.addCleanup(serving.join, 5)
        self.addCleanup(self.chan.sock.shutdown, socket.SHUT_RDWR)  # serve returns

    def result(self):
        """The answer of the next call (past any `U`)."""
        while True:
            kind, payload = self.chan.recv()
            if kind in (OK, ERROR):
                return kind, bytes(payload)

    def first_call_loads(self, text):
        self.chan.send_json(CALL, {})
        self.request()
        self.answer(ok=True, found=True, value=text)
        self.assertEqual(self.result(), (OK, text.encode()))

    def test_a_push_alone_is_applied_and_is_not_a_call(self):
        self.first_call_loads("1")
        self.push(key="k", value="2", acked=0)
        deadline = time.monotonic() + 5
        while self.worker.cache.values["k"] != "2" and time.monotonic() < deadline:
            time.sleep(0.001)
        self.chan.send_json(CALL, {})
        self.assertEqual(self.result(), (OK, b"2"))
        self.assertEqual(self.worker.calls, 2)

    def test_a_push_sent_with_a_call_is_applied_before_it(self):
        self.first_call_loads("1")
        self.chan.queue_json(STATE_PUSH, {"key": "k", "value": "2", "acked": 0})
        self.chan.queue(CALL, b"{}")
        self.chan.flush()
        self.assertEqual(self.result(), (OK, b"2"))
        self.assertEqual(self.worker.calls, 2)


if __name__ == "__main__":
    unittest.main()
