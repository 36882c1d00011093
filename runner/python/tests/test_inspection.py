"""inspection: a source's syntax, entry function and signature, without running it."""

import unittest

from skython_runtime.inspection import inspect_source


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


if __name__ == "__main__":
    unittest.main()
