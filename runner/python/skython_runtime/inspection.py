"""Reading a source at deploy time without running it: syntax, entry function, signature.

A source may be hostile: parsing and compiling it can exhaust recursion, memory or CPU. The
zygote runs `inspect_source` in a child process within the limits below (zygote.py), so such a
source fails its own deploy with one of the `source_too_*` codes and nothing else.
"""

import ast
import resource
import sys

# Largest source, in bytes of UTF-8; the gateway sends its own limit with each request
# (skython_crds::MAX_SOURCE_BYTES, the same value).
MAX_SOURCE_BYTES = 1 << 20
# What one inspection may use. A megabyte of dense statements takes about 1 GiB and 5 s of CPU to
# parse and compile; real sources take a small fraction.
MEMORY_BYTES = 1 << 30  # on top of what the zygote has mapped
CPU_SECONDS = 10
WALL_SECONDS = 20
# A MemoryError this close to the address-space limit means the memory ran out; further below,
# it is the parser's own stack limit (deep nesting), which CPython also reports as MemoryError.
_NEAR_LIMIT = 64 << 20


def _params_from_ast(fn):
    a = fn.args
    out = []

    def add(arg, kind, default=None):
        out.append({k: v for k, v in {
            "name": arg.arg, "kind": kind,
            "annotation": ast.unparse(arg.annotation) if arg.annotation else None,
            "default": ast.unparse(default) if default is not None else None,
        }.items() if v is not None})

    positional = a.posonlyargs + a.args
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    for i, arg in enumerate(positional):
        add(arg, "positional_only" if i < len(a.posonlyargs) else "positional_or_keyword",
            defaults[i])
    if a.vararg:
        add(a.vararg, "var_positional")
    for arg, d in zip(a.kwonlyargs, a.kw_defaults):
        add(arg, "keyword_only", d)
    if a.kwarg:
        add(a.kwarg, "var_keyword")
    return out


def check_size(source, limit=MAX_SOURCE_BYTES):
    """The error for a source over `limit` bytes, else None: checked before any parsing."""
    size = len(source.encode("utf-8", "surrogatepass"))
    if size <= limit:
        return None
    return _error("source_too_large",
                  f"the source is {size} bytes, more than the limit of {limit} bytes")


def too_deeply_nested():
    return _error(
        "source_too_deeply_nested",
        "the source nests too deeply for Python to compile it (more than about"
        f" {sys.getrecursionlimit()} levels of nested expressions or blocks, such as a chain of"
        " that many operators); split the expression into smaller ones")


def out_of_memory():
    return _error(
        "source_too_large",
        f"reading the source needs more than the limit of {MEMORY_BYTES >> 20} MiB of memory;"
        " make it smaller (for example, load large data at run time instead of writing it in"
        " the source)")


def too_complex():
    return _error(
        "source_too_complex",
        f"checking the source did not finish within the limits of {CPU_SECONDS} s of CPU time,"
        f" {WALL_SECONDS} s and {MEMORY_BYTES >> 20} MiB of memory; make it smaller or simpler")


def memory_error(peak, limit):
    """Which limit a MemoryError hit, from the process's peak address space and its limit."""
    if limit != resource.RLIM_INFINITY and peak >= limit - _NEAR_LIMIT:
        return out_of_memory()
    return too_deeply_nested()


def _peak_address_space():
    with open("/proc/self/status") as f:
        return next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmPeak:")), 0)


def _error(code, message):
    return {"ok": False, "error": {"code": code, "message": message}}


def inspect_source(source, filename, entrypoint=None):
    """Syntax check and entry-point resolution, without running the source. Any limit the
    source exhausts (recursion, memory) is its error, with a `source_too_*` code."""
    try:
        return _inspect(source, filename, entrypoint)
    except RecursionError:
        return too_deeply_nested()
    except MemoryError:
        return memory_error(_peak_address_space(), resource.getrlimit(resource.RLIMIT_AS)[0])


def _inspect(source, filename, entrypoint):
    try:
        tree = ast.parse(source, filename)
        compile(tree, filename, "exec", dont_inherit=True)
    except SyntaxError as e:
        line, col = e.lineno or 0, e.offset or 0
        return {"ok": False, "error": {
            "code": "syntax_error",
            "message": f"{type(e).__name__}: {e.msg} (line {line}, column {col})",
            "line": line, "column": col, "text": (e.text or "").rstrip("\n")}}
    except ValueError as e:  # e.g. null bytes
        return {"ok": False, "error": {"code": "syntax_error", "message": str(e)}}
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    public = [n for n in defs if not n.startswith("_")]
    if entrypoint:
        if entrypoint not in defs:
            bound = any(isinstance(n, (ast.Assign, ast.Import, ast.ImportFrom, ast.ClassDef))
                        and entrypoint in _bound_names(n) for n in tree.body)
            if not bound:
                return {"ok": False, "error": {
                    "code": "entrypoint_not_found",
                    "message": f"entrypoint {entrypoint!r} is not defined at the top level of the"
                               f" source; top-level functions: {', '.join(defs) or 'none'}",
                    "candidates": list(defs)}}
            return {"ok": True, "signature": {"entrypoint": entrypoint, "params": []}}
        name = entrypoint
    elif "main" in defs:
        name = "main"
    elif len(public) == 1:
        name = public[0]
    elif not public:
        return {"ok": False, "error": {
            "code": "no_entrypoint",
            "message": "the source defines no public top-level function; define one (for example"
                       " `def main(...)`) or set `entrypoint`",
            "candidates": []}}
    else:
        return {"ok": False, "error": {
            "code": "ambiguous_entrypoint",
            "message": f"the source defines several public functions ({', '.join(public)}) and no"
                       " `main`; set `entrypoint` to the one to call, or prefix helpers with `_`",
            "candidates": public}}
    fn = defs[name]
    sig = {"entrypoint": name, "params": _params_from_ast(fn)}
    if fn.returns is not None:
        sig["returns"] = ast.unparse(fn.returns)
    doc = ast.get_docstring(fn)
    if doc:
        sig["doc"] = doc
    return {"ok": True, "signature": sig}


def _bound_names(node):
    if isinstance(node, ast.ClassDef):
        return {node.name}
    if isinstance(node, ast.Assign):
        return {t.id for t in node.targets if isinstance(t, ast.Name)}
    return {(a.asname or a.name).split(".")[0] for a in node.names}
