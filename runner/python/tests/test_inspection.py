"""inspection: a source's syntax, entry function and signature, without running it."""

import resource
import subprocess
import sys
import textwrap
import unittest

from skython_runtime import inspection
from skython_runtime.inspection import check_size, inspect_source


def error(source, entrypoint=None):
    answer = inspect_source(source, "f.py", entrypoint)
    assert not answer["ok"], answer
    return answer["error"]


def signature(source, entrypoint=None):
    answer = inspect_source(source, "f.py", entrypoint)
    assert answer["ok"], answer
    return answer["signature"]


class Syntax(unittest.TestCase):
    def test_a_syntax_error_names_its_line_column_and_text(self):
        e = error("x = 1\ndef f(:\n")
        self.assertEqual((e["code"], e["line"], e["text"]), ("syntax_error", 2, "def f(:"))

    def test_errors_found_by_the_compiler_are_syntax_errors(self):
        self.assertEqual(error("return 1\n")["code"], "syntax_error")

    def test_null_bytes_are_a_syntax_error(self):
        self.assertEqual(error("def main():\n  return 1\x00\n")["code"], "syntax_error")

    def test_nothing_of_the_source_runs(self):
        signature("import os\nos._exit(3)\nraise SystemExit\ndef main(): pass\n")


class EntryFunction(unittest.TestCase):
    def test_main_is_preferred(self):
        self.assertEqual(signature("def a(): pass\ndef main(): pass\n")["entrypoint"], "main")

    def test_a_single_public_function_is_the_entry(self):
        self.assertEqual(signature("def _h(): pass\ndef add(): pass\n")["entrypoint"], "add")

    def test_no_public_function(self):
        self.assertEqual(error("def _h(): pass\n")["code"], "no_entrypoint")

    def test_several_public_functions_and_no_main(self):
        e = error("def a(): pass\ndef b(): pass\n")
        self.assertEqual((e["code"], e["candidates"]), ("ambiguous_entrypoint", ["a", "b"]))

    def test_a_named_entry_that_is_not_defined(self):
        e = error("def a(): pass\n", entrypoint="b")
        self.assertEqual((e["code"], e["candidates"]), ("entrypoint_not_found", ["a"]))

    def test_a_named_entry_bound_otherwise_has_no_known_parameters(self):
        for source in ("from math import sqrt as f\n", "f = len\n", "class f: pass\n"):
            self.assertEqual(signature(source, entrypoint="f"), {"entrypoint": "f", "params": []})


class Signature(unittest.TestCase):
    def test_parameters_their_kinds_defaults_and_annotations(self):
        sig = signature("def f(a, /, b: int = 2, *c, d, e=None, **g) -> str:\n  'Doc.'\n")
        self.assertEqual(sig, {"entrypoint": "f", "returns": "str", "doc": "Doc.", "params": [
            {"name": "a", "kind": "positional_only"},
            {"name": "b", "kind": "positional_or_keyword", "annotation": "int", "default": "2"},
            {"name": "c", "kind": "var_positional"},
            {"name": "d", "kind": "keyword_only"},
            {"name": "e", "kind": "keyword_only", "default": "None"},
            {"name": "g", "kind": "var_keyword"}]})

    def test_async_functions_are_entries_too(self):
        self.assertEqual(signature("async def main(x): pass\n")["params"],
                         [{"name": "x", "kind": "positional_or_keyword"}])


class Limits(unittest.TestCase):
    """A hostile source fails its own inspection with a `source_too_*` code, never a crash."""

    def test_a_source_over_the_size_limit_names_the_limit(self):
        self.assertIsNone(check_size("x = 1\n", 6))
        e = check_size("x = 1\n", 5)["error"]
        self.assertEqual(e["code"], "source_too_large")
        self.assertIn("6 bytes, more than the limit of 5 bytes", e["message"])

    def test_the_size_is_counted_in_utf8_bytes(self):
        self.assertEqual(check_size("é" * 3, 5)["error"]["code"], "source_too_large")
        self.assertIsNone(check_size("é" * 3, 6))

    def test_a_long_chain_of_operators_is_too_deeply_nested(self):
        # The compiler's recursion limit (RecursionError).
        e = error("x = " + "1+" * 300000 + "1\ndef main(): return 1\n")
        self.assertEqual(e["code"], "source_too_deeply_nested")
        self.assertIn("levels of nested expressions", e["message"])

    def test_a_long_chain_of_unary_operators_is_too_deeply_nested(self):
        # The parser's own stack limit, which CPython reports as a MemoryError.
        self.assertEqual(error("x = " + "-" * 300000 + "1\ndef main(): return 1\n")["code"],
                         "source_too_deeply_nested")

    def test_a_deep_default_value_is_too_deeply_nested(self):
        # Compiles, but rendering the signature recurses deeper than Python allows.
        depth = sys.getrecursionlimit() - 100
        self.assertEqual(error(f"def main(x={'-' * depth}1): pass\n")["code"],
                         "source_too_deeply_nested")

    def test_a_memory_error_near_the_limit_is_a_source_too_large(self):
        limit = 2 << 30
        e = inspection.memory_error(limit - (1 << 20), limit)["error"]
        self.assertEqual(e["code"], "source_too_large")
        self.assertIn(f"{inspection.MEMORY_BYTES >> 20} MiB", e["message"])

    def test_a_memory_error_far_from_the_limit_is_the_parsers_stack(self):
        self.assertEqual(inspection.memory_error(100 << 20, 2 << 30)["error"]["code"],
                         "source_too_deeply_nested")
        self.assertEqual(
            inspection.memory_error(100 << 20, resource.RLIM_INFINITY)["error"]["code"],
            "source_too_deeply_nested")

    def test_a_source_whose_parse_exhausts_memory_is_too_large(self):
        # A real address-space limit, in a process of its own: 64 MiB more than it has mapped
        # is far from what 200,000 statements take to parse.
        script = textwrap.dedent("""
            import json, resource
            from skython_runtime.inspection import inspect_source
            from skython_runtime.worker import lower_limit, mapped_bytes
            lower_limit(resource.RLIMIT_AS, mapped_bytes() + (64 << 20))
            print(json.dumps(inspect_source("a\\n" * 200000, "f.py")))
        """)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             check=True, env={"PYTHONPATH": ":".join(sys.path)})
        self.assertIn('"code": "source_too_large"', out.stdout)


if __name__ == "__main__":
    unittest.main()
