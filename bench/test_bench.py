"""Unit tests of the harness's pure parts and of the transport floor (run by `make test`, with a
one-round smoke run)."""
import os
import socket
import types
import unittest

import bench

WRK_OUTPUT = """Running 3s test @ http://127.0.0.1:8080/fn/admin/add
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     6.47ms  412.00us  10.92ms   80.12%
    Req/Sec     9.90k   300.00     10.20k    70.00%
  Latency Distribution
     50%    6.47ms
     75%    6.70ms
     90%    7.00ms
     99%    1.05s
  29553 requests in 3.00s, 3.10MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:   9851.00
Transfer/sec:      1.03MB
"""


class WrkOutput(unittest.TestCase):
    def test_figures_and_every_kind_of_error_are_read(self):
        r = bench.parse_wrk(WRK_OUTPUT)
        self.assertEqual(r["rps"], 9851.0)
        self.assertAlmostEqual(r["p50"], 6.47)
        self.assertAlmostEqual(r["p99"], 1050.0)
        self.assertEqual(r["errors"], 12)

    def test_no_errors_when_wrk_reports_none(self):
        clean = "\n".join(line for line in WRK_OUTPUT.splitlines()
                          if "errors" not in line and "Non-2xx" not in line)
        self.assertEqual(bench.parse_wrk(clean)["errors"], 0)

    def test_durations(self):
        self.assertEqual(bench.to_ms("250us"), 0.25)
        self.assertEqual(bench.to_ms("2s"), 2000.0)
        with self.assertRaises(ValueError):
            bench.to_ms("fast")


class Rounds(unittest.TestCase):
    def test_the_order_rotates_so_none_always_goes_first(self):
        orders = [order for _, order in bench.rounds_of(["a", "b", "c"], 3)]
        self.assertEqual(orders, [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]])
        self.assertEqual(bench.summary([3, 1, 2]), {"min": 1, "median": 2, "max": 3})


def scenario(skython_rps, fastapi_rps, flask_rps, p50s=(0.1, 0.2, 0.3), errors=0):
    one = lambda rps, p50: {"rps": {"median": rps, "min": rps, "max": rps},
                            "p50": {"median": p50, "min": p50, "max": p50},
                            "errors": {"median": errors, "min": errors, "max": errors}}
    return {"skython": one(skython_rps, p50s[0]), "fastapi": one(fastapi_rps, p50s[1]),
            "flask-1w": one(flask_rps, p50s[2])}


class Targets(unittest.TestCase):
    def test_ratios_are_against_the_better_rival(self):
        warm = {"add": {64: scenario(10000, 2000, 2500), 1: scenario(1, 1, 1, p50s=(0.1, 0.3, 0.2))}}
        cold = {"fresh `python -c \"import pandas\"`": {"median": 400.0},
                "deploy + first call, pandas, pre-warmed zygote": {"median": 50.0}}
        t = {what: (measured, met) for what, measured, met in bench.targets(warm, cold)}
        throughput = next(v for k, v in t.items() if k.startswith("warm throughput"))
        self.assertEqual(throughput, ("4.00× (flask-1w)", False))
        p50 = next(v for k, v in t.items() if k.startswith("p50"))
        self.assertEqual(p50, ("0.50× (flask-1w)", True))
        first = next(v for k, v in t.items() if k.startswith("first call"))
        self.assertFalse(first[1], "50 ms is more than a tenth of 400 ms")
        self.assertTrue(t["zero errors in every run"][1])

    def test_the_c1_target_shows_the_transport_floor_when_measured(self):
        warm = {"add": {1: scenario(1, 1, 1, p50s=(0.12, 0.17, 0.3))}}
        floor = dict(warm["add"][1]["skython"], p50={"median": 0.058, "min": 0.058, "max": 0.058})
        warm["add"][1]["http-floor"] = floor
        p50 = next(m for what, m, _ in bench.targets(warm, None) if what.startswith("p50"))
        self.assertEqual(p50, "0.71× (fastapi); 120 vs 170 µs, a do-nothing HTTP responder 58 µs")

    def test_any_error_misses_the_zero_errors_target(self):
        warm = {"add": {64: scenario(10000, 2000, 2500, errors=1)}}
        t = {what: met for what, _, met in bench.targets(warm, None)}
        self.assertFalse(t["zero errors in every run"])


def state_result(store, state_rps, stateless_rps, errors=0):
    fig = lambda v: {"median": v, "min": v, "max": v}
    return {"store": store,
            "state": {"rps": fig(state_rps), "p50": fig(1.0), "p99": fig(2.0), "errors": fig(errors)},
            "stateless": {"rps": fig(stateless_rps), "p50": fig(0.3), "p99": fig(1.0), "errors": fig(0)},
            "ratio": {"rps": fig(state_rps / stateless_rps)}}


class StateTarget(unittest.TestCase):
    def test_the_embedded_store_is_held_to_the_target_and_shown_against_stateless_calls(self):
        state = {"skython": state_result("sqlite", 16000, 40000),
                 "skython-mongodb": state_result("mongodb", 3000, 39000)}
        t = {what: (measured, met) for what, measured, met in bench.targets({}, None, None, state)}
        measured, met = next(v for k, v in t.items() if k.startswith("state calls"))
        self.assertTrue(met)
        self.assertEqual(measured, "16,000 calls/s, 1.07× the target; 0.40× the stateless `add` "
                                   "(40,000 req/s) in the same rounds")
        lines = bench.state_lines(state)
        self.assertTrue(lines[0].endswith("target ≥ 15,000: 1.07× met"), lines[0])
        self.assertNotIn("target", lines[1], "MongoDB has no target")

    def test_below_the_target_is_missed(self):
        state = {"skython": state_result("sqlite", 4900, 40000)}
        met = next(m for what, _, m in bench.targets({}, None, None, state) if what.startswith("state"))
        self.assertFalse(met)
        self.assertIn("0.33× MISSED", bench.state_lines(state)[0])

    def test_errors_of_the_state_runs_miss_the_zero_errors_target(self):
        state = {"skython": state_result("sqlite", 16000, 40000, errors=3)}
        t = {what: met for what, _, met in bench.targets({}, None, None, state)}
        self.assertFalse(t["zero errors in every run"])


def ab_raw(old, new):
    """Every measure with the same per-round values, for old and new."""
    return {"old": {key: list(old) for key, _, _ in bench.AB_MEASURES},
            "new": {key: list(new) for key, _, _ in bench.AB_MEASURES}}


class AB(unittest.TestCase):
    def test_two_builds_take_turns_going_first(self):
        orders = [order for _, order in bench.rounds_of(["old", "new"], 4)]
        self.assertEqual(orders, [["old", "new"], ["new", "old"], ["old", "new"], ["new", "old"]])

    def test_the_ratio_is_taken_within_each_round(self):
        # The machine is twice as slow in round 2; new/old per round: 0.9, 1.1, 0.8. The ratio of
        # the medians (80/100) would say 0.8.
        rows = bench.ab_rows(ab_raw(old=[100, 50, 100], new=[90, 55, 80]), "old", "new")
        self.assertEqual([r["key"] for r in rows], [key for key, _, _ in bench.AB_MEASURES])
        row = rows[0]
        self.assertEqual(row["old"], {"min": 50, "median": 100, "max": 100})
        self.assertEqual(row["new"], {"min": 55, "median": 80, "max": 90})
        for bound, ratio in (("min", 0.8), ("median", 0.9), ("max", 1.1)):
            self.assertAlmostEqual(row["ratio"][bound], ratio)

    def test_rounds_that_do_not_pair_up_are_refused(self):
        raw = ab_raw(old=[100, 100], new=[90, 90])
        raw["new"]["start_ms"].pop()
        with self.assertRaisesRegex(ValueError, "start_ms: 2 rounds of old against 1 of new"):
            bench.ab_rows(raw, "old", "new")

    def test_the_table_shows_both_builds_and_the_ratio_per_measure(self):
        rows = bench.ab_rows(ab_raw(old=[20.0, 10.0], new=[22.0, 12.0]), "old", "new")
        lines = bench.ab_table(rows, "9f560f6", "b654904")
        self.assertEqual(lines[0], "| measure | old: 9f560f6 | new: b654904 | new/old |")
        self.assertEqual(len(lines), 2 + len(bench.AB_MEASURES))
        start = next(l for l in lines if l.startswith("| worker start: deploy"))
        self.assertEqual(start, "| worker start: deploy + first call of a plain function, ms | "
                                "15.0 (10.0–20.0) | 17.0 (12.0–22.0) | 1.150× (1.100–1.200) |")


class HttpFloor(unittest.TestCase):
    """The transport floor answers every request of a connection, pipelined ones included."""

    def test_it_answers_each_request_and_refuses_what_it_cannot_frame(self):
        binary = os.environ.get("HTTP_FLOOR")
        if not binary:
            self.skipTest("HTTP_FLOOR (the http-floor binary) is not set; make test sets it")
        args = types.SimpleNamespace(http_floor=binary)
        server = bench.start_http_floor(args)
        try:
            req = b"POST /add HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\n{\"a\":2,\"b\":3}"
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as c:
                c.sendall(req + req[:20])
                c.sendall(req[20:])
                got = b""
                while got.count(b"\r\n\r\n5") < 2:
                    part = c.recv(4096)
                    self.assertTrue(part, f"the connection closed after {got!r}")
                    got += part
                self.assertEqual(got.count(b"HTTP/1.1 200 OK"), 2)
                c.sendall(b"POST / HTTP/1.1\r\ncontent-length: many\r\n\r\n")
                self.assertIn(b"400 Bad Request", c.recv(4096))
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as c:
                c.sendall(b"POST / HTTP/1.1\r\ncontent-length: 100000\r\n\r\n" + b"x" * 70000)
                self.assertIn(b"413 Content Too Large", c.recv(4096))
        finally:
            server.stop()


if __name__ == "__main__":
    unittest.main()
