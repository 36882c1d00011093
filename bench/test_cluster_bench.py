"""Unit tests of the cluster harness's pure parts (run by `make bench-check`; no cluster needed)."""
import json
import unittest

import cluster_bench as cb

METRICS = """# HELP skython_pod_cold_start_seconds From a call that found no pod to each step
# TYPE skython_pod_cold_start_seconds histogram
skython_pod_cold_start_seconds_bucket{function="admin/add",phase="scale",le="0.01"} 2
skython_pod_cold_start_seconds_sum{function="admin/add",phase="scale"} 0.02
skython_pod_cold_start_seconds_count{function="admin/add",phase="scale"} 2
skython_pod_cold_start_seconds_sum{function="admin/add",phase="first_answer"} 1.5
skython_pod_cold_start_seconds_count{function="admin/add",phase="first_answer"} 2
skython_pod_cold_start_seconds_sum{function="admin/other",phase="scale"} 9
skython_pod_cold_start_seconds_count{function="admin/other",phase="scale"} 1
skython_function_ready_pods{function="admin/add"} 3
skython_function_ready_pods{function="admin/burst"} 2
skython_operator_leader 1
"""


class Metrics(unittest.TestCase):
    def test_samples_are_read_with_their_labels(self):
        m = cb.parse_metrics(METRICS)
        self.assertEqual(cb.metric(m, "skython_function_ready_pods", function="admin/add"), 3)
        self.assertEqual(cb.metric(m, "skython_operator_leader"), 1)

    def test_a_metric_without_labels_asked_sums_every_sample(self):
        self.assertEqual(cb.metric(cb.parse_metrics(METRICS), "skython_function_ready_pods"), 5)

    def test_a_missing_metric_is_none_not_zero(self):
        m = cb.parse_metrics(METRICS)
        self.assertIsNone(cb.metric(m, "skython_function_ready_pods", function="admin/nope"))

    def test_label_values_with_escaped_quotes_are_kept_whole(self):
        m = cb.parse_metrics('x{function="a\\"b",phase="scale"} 1\n')
        self.assertEqual(cb.metric(m, "x", phase="scale"), 1)

    def test_one_cold_start_between_two_scrapes_gives_its_own_phases(self):
        before = cb.parse_metrics(METRICS)
        after = cb.parse_metrics(METRICS.replace(
            'phase="scale"} 0.02', 'phase="scale"} 0.05').replace(
            'phase="scale"} 2\n', 'phase="scale"} 3\n').replace(
            'phase="first_answer"} 1.5', 'phase="first_answer"} 2.3').replace(
            'phase="first_answer"} 2\n', 'phase="first_answer"} 3\n'))
        phases = cb.phase_deltas(before, after, "admin/add")
        self.assertAlmostEqual(phases["scale"], 0.03)
        self.assertAlmostEqual(phases["first_answer"], 0.8)

    def test_phases_not_observed_in_between_are_left_out(self):
        m = cb.parse_metrics(METRICS)
        self.assertEqual(cb.phase_deltas(m, m, "admin/add"), {})


class ReplicaSeconds(unittest.TestCase):
    def test_each_sample_holds_until_the_next_and_the_last_until_the_end(self):
        self.assertAlmostEqual(cb.step_integral([(0.0, 1), (2.0, 3), (3.0, 0)], 5.0), 2 + 3)
        self.assertAlmostEqual(cb.step_integral([(0.0, 2), (1.0, 4)], 3.0), 2 + 8)

    def test_samples_past_the_end_count_nothing(self):
        self.assertAlmostEqual(cb.step_integral([(0.0, 1), (4.0, 10)], 2.0), 2)

    def test_the_ideal_runs_just_enough_pods(self):
        self.assertEqual([cb.ideal_replicas(n, 4) for n in (0, 1, 4, 5, 20)], [0, 1, 1, 2, 5])

    def test_pods_count_only_within_the_window_and_live_ones_until_its_end(self):
        lifetimes = {"a": (-1.0, 3.0), "b": (2.0, None), "c": (20.0, 25.0)}
        self.assertAlmostEqual(cb.pod_seconds(lifetimes, 0.0, 10.0), 3 + 8)


class WatchStream(unittest.TestCase):
    def test_documents_are_split_and_a_partial_one_is_kept_for_later(self):
        a, b = json.dumps({"type": "ADDED"}, indent=2), json.dumps({"type": "DELETED"})
        docs, rest = cb.split_json_stream(a + "\n" + b[:5])
        self.assertEqual((docs, rest), ([{"type": "ADDED"}], b[:5]))
        docs, rest = cb.split_json_stream(rest + b[5:] + "\n")
        self.assertEqual((docs, rest), ([{"type": "DELETED"}], ""))


def cold(functions, seconds):
    return {"functions": functions, "seconds": cb.summary(seconds)}


def one(v):
    return {"median": v, "min": v, "max": v}


class Targets(unittest.TestCase):
    def verdicts(self, results):
        return [met for _, _, met in cb.targets(results)]

    def test_the_cold_start_target_is_on_the_slowest_run(self):
        self.assertEqual(self.verdicts({"cold": cold(10, [0.6, 0.7, 0.9])}), [True])
        self.assertEqual(self.verdicts({"cold": cold(10, [0.6, 0.7, 1.3])}), [False])

    def test_many_functions_are_held_to_a_ratio_of_the_median_with_few(self):
        few = cold(10, [0.5, 0.5, 0.5])
        self.assertEqual(self.verdicts({"cold": few, "cold_many": cold(200, [0.55, 0.6, 0.6])}), [True, True])
        self.assertEqual(self.verdicts({"cold": few, "cold_many": cold(200, [0.65, 0.65, 0.7])}), [True, False])

    def test_figures_without_a_target_in_the_issue_are_shown_without_a_verdict(self):
        side = {c: {"rps": one(r), "p50": one(p)} for c, r, p in (("c1", 500, 2.0), ("c64", 900, 70.0))}
        gw = {c: {"rps": one(r), "p50": one(p)} for c, r, p in (("c1", 400, 2.5), ("c64", 810, 80.0))}
        results = {"warm": {"direct": side, "gateway": gw},
                   "burst": {"ideal_seconds": 100.0, "ready_seconds": 150.0, "pod_seconds": 200.0}}
        rows = cb.targets(results)
        self.assertEqual([met for _, _, met in rows], [None, None, None])
        self.assertIn("+0.500 ms", rows[0][1])
        self.assertIn("0.90×", rows[1][1])
        self.assertIn("1.50× ready pods, 2.00× pods existing", rows[2][1])


class Load(unittest.TestCase):
    def test_wrk_figures_and_errors_are_read(self):
        text = ("  Latency Distribution\n     50%  250.00us\n     99%    2.00ms\n"
                "  Socket errors: connect 0, read 1, write 0, timeout 2\n"
                "  Non-2xx or 3xx responses: 3\nRequests/sec:   1234.50\n")
        self.assertEqual(cb.parse_wrk(text), {"rps": 1234.5, "p50": 0.25, "p99": 2.0, "errors": 6})


if __name__ == "__main__":
    unittest.main()


class Pool(unittest.TestCase):
    def test_the_nearest_rank_percentile_of_twenty_is_the_largest_at_99(self):
        values = list(range(1, 21))
        self.assertEqual(cb.percentile(values, 50), 10)
        self.assertEqual(cb.percentile(values, 99), 20)
        self.assertEqual(cb.percentile([7], 99), 7)

    def test_pool_targets_are_met_or_missed_on_their_thresholds(self):
        results = {"pool": {"hits": [0.02] * 19 + [0.3], "idle_pss_mib": [96],
                            "misses": [{"seconds": 0.6, "phases": {}}, {"seconds": 0.9, "phases": {}}]}}
        verdicts = {what.rsplit(":", 1)[-1].strip(): met for what, _, met in cb.targets(results)}
        self.assertTrue(verdicts["p50 ≤ 50 ms"])
        self.assertFalse(verdicts["p99 ≤ 200 ms"], "one slow hit in twenty is the p99")
        self.assertTrue(verdicts["max ≤ 1 s"])

    def test_each_pool_miss_is_listed_with_its_phases(self):
        misses = [{"seconds": 0.6, "phases": {"scale": 0.004, "port_open": 0.55}},
                  {"seconds": 0.9, "phases": {"scale": 0.006, "port_open": 0.85}}]
        table = "\n".join(cb.cold_table(cb.cold_summary(misses, None), "pool miss (2)"))
        self.assertIn("| each run (s) | 0.600, 0.900 |", table)
        self.assertIn("| gateway phase: port_open |", table)
