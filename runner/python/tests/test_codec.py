"""codec: JSON of return values and state values."""

import dataclasses
import datetime
import decimal
import enum
import unittest
import uuid

from skython_runtime.codec import DECODER, Unencodable, decode, encode

try:
    import numpy
except ImportError:  # the standard library runtime has no numpy
    numpy = None
try:
    import pandas
except ImportError:
    pandas = None


class PlainValues(unittest.TestCase):
    def test_json_values_encode_compactly(self):
        self.assertEqual(encode({"a": [1, 2.5, "é", None, True]}),
                         '{"a":[1,2.5,"é",null,true]}'.encode())

    def test_non_finite_floats_become_null(self):
        self.assertEqual(encode([float("nan"), float("inf"), -float("inf"), 1.0]),
                         b"[null,null,null,1.0]")

    def test_odd_dict_keys_become_strings(self):
        self.assertEqual(DECODER.decode(encode({(1, 2): "t", 3: "i"}).decode()),
                         {"(1, 2)": "t", "3": "i"})

    def test_lone_surrogates_become_replacement_characters(self):
        self.assertEqual(encode("a\ud800b").decode(), '"a\ufffdb"')

    def test_decoder_reads_what_encode_wrote(self):
        value = {"n": [1, {"x": "y"}], "s": "\u2603"}
        self.assertEqual(DECODER.decode(encode(value).decode()), value)


class Conversions(unittest.TestCase):
    def test_standard_library_values_are_converted(self):
        class Color(enum.Enum):
            RED = "red"

        @dataclasses.dataclass
        class Point:
            x: int
            y: int

        value = {
            "when": datetime.datetime(2024, 1, 2, 3, 4, 5),
            "day": datetime.date(2024, 1, 2),
            "span": datetime.timedelta(seconds=90),
            "bytes": b"\x00\x01",
            "set": {3, 1, 2},
            "decimal": decimal.Decimal("1.5"),
            "uuid": uuid.UUID(int=1),
            "color": Color.RED,
            "point": Point(1, 2),
            "range": range(3),
        }
        self.assertEqual(DECODER.decode(encode(value).decode()), {
            "when": "2024-01-02T03:04:05", "day": "2024-01-02", "span": 90.0, "bytes": "AAE=",
            "set": [1, 2, 3], "decimal": 1.5, "uuid": "00000000-0000-0000-0000-000000000001",
            "color": "red", "point": {"x": 1, "y": 2}, "range": [0, 1, 2]})

    @unittest.skipIf(numpy is None, "numpy is not installed")
    def test_numpy_arrays_and_scalars_become_lists_and_numbers(self):
        a = numpy.arange(4, dtype=float).reshape(2, 2)
        self.assertEqual(encode({"a": a, "s": a.sum(), "n": numpy.float64("nan")}),
                         b'{"a":[[0.0,1.0],[2.0,3.0]],"s":6.0,"n":null}')

    @unittest.skipIf(pandas is None, "pandas is not installed")
    def test_pandas_frames_become_records_and_series_lists(self):
        df = pandas.DataFrame({"a": [1, 2], "b": [0.5, None]})
        self.assertEqual(DECODER.decode(encode({"df": df, "s": df["a"]}).decode()),
                         {"df": [{"a": 1, "b": 0.5}, {"a": 2, "b": None}], "s": [1, 2]})


class Refusals(unittest.TestCase):
    def test_an_unknown_object_is_named(self):
        class Opaque:
            pass

        with self.assertRaises(Unencodable) as cm:
            encode({"x": Opaque()})
        self.assertIn("Opaque, which cannot be encoded as JSON", str(cm.exception))

    def test_a_circular_value_is_refused(self):
        loop = []
        loop.append(loop)
        with self.assertRaises(Unencodable) as cm:
            encode(loop)
        self.assertIn("circular", str(cm.exception))


if __name__ == "__main__":
    unittest.main()


class Decode(unittest.TestCase):
    def test_compact_and_spaced_text_decode_alike(self):
        for text in ('{"a":[1,2.5]}', ' { "a" : [1, 2.5] } '):
            self.assertEqual(decode(text), {"a": [1, 2.5]})

    def test_text_with_more_after_the_value_is_refused(self):
        with self.assertRaisesRegex(ValueError, "Extra data"):
            decode("1 2")

    def test_empty_text_is_refused(self):
        with self.assertRaises(ValueError):
            decode("")
