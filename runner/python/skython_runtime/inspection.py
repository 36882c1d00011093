"""Reading a source at deploy time without running it: syntax, entry function, signature."""

import ast


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


def inspect_source(source, filename, entrypoint=None):
    """Syntax check and entry-point resolution, without running the source."""
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
