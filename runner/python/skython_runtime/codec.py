"""JSON of return values and state values: a prebuilt C encoder for the usual case, and a slow
path that converts numpy, pandas, datetime, bytes, sets, dataclasses and the like."""

import base64
import dataclasses
import datetime
import decimal
import enum
import fractions
import json
import math
import pathlib
import uuid


class Unencodable(Exception):
    pass


def _is_nan_like(o):
    try:
        return o is None or (isinstance(o, float) and math.isnan(o)) or bool(o != o)
    except Exception:
        return False


def to_json_compatible(o):
    """One conversion step for a value `json` cannot encode itself; raises TypeError otherwise."""
    mod = type(o).__module__ or ""
    if mod.startswith("numpy"):
        if hasattr(o, "tolist"):  # ndarray and numpy scalars
            return o.tolist()
    if mod.startswith("pandas"):
        name = type(o).__name__
        if name == "DataFrame":
            return o.to_dict(orient="records")
        if name == "Series":
            if type(o.index).__name__ == "RangeIndex" and o.index.start == 0 and o.index.step == 1:
                return o.tolist()
            return {str(k) if not isinstance(k, (str, int, float, bool)) else k: v
                    for k, v in o.items()}
        if name in ("NaTType", "NAType"):
            return None
        if name == "Timedelta":
            return o.total_seconds()
        if hasattr(o, "tolist"):  # Index, Categorical, arrays
            return o.tolist()
    if isinstance(o, (datetime.datetime, datetime.date, datetime.time)):
        return o.isoformat()
    if isinstance(o, datetime.timedelta):
        return o.total_seconds()
    if isinstance(o, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(o)).decode("ascii")
    if isinstance(o, (set, frozenset)):
        try:
            return sorted(o)
        except TypeError:
            return list(o)
    if isinstance(o, (decimal.Decimal, fractions.Fraction)):
        return float(o)
    if isinstance(o, uuid.UUID):
        return str(o)
    if isinstance(o, pathlib.PurePath):
        return str(o)
    if isinstance(o, enum.Enum):
        return o.value
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}
    if isinstance(o, (range, type({}.keys()), type({}.values()))):
        return list(o)
    if callable(getattr(o, "model_dump", None)):  # pydantic v2 models
        return o.model_dump()
    raise TypeError(type(o).__name__)


def _sanitize(o, depth=0):
    """The slow path: NaN/inf become null, odd dict keys become strings."""
    if depth > 200:
        raise Unencodable("the return value is nested more than 200 levels deep (or is circular)")
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if o is None or isinstance(o, (str, int, bool)):
        return o
    if isinstance(o, dict):
        out = {}
        for k, v in o.items():
            if not (k is None or isinstance(k, (str, int, float, bool))):
                try:
                    k = to_json_compatible(k)
                except TypeError:
                    pass
                if not (k is None or isinstance(k, (str, int, float, bool))):
                    k = str(k)
            out[k] = _sanitize(v, depth + 1)
        return out
    if isinstance(o, (list, tuple)):
        return [_sanitize(v, depth + 1) for v in o]
    if _is_nan_like(o) and type(o).__module__.startswith(("pandas", "numpy")):
        return None
    try:
        return _sanitize(to_json_compatible(o), depth + 1)
    except TypeError:
        raise Unencodable(
            f"the return value contains a {type(o).__module__}.{type(o).__qualname__}, which cannot"
            " be encoded as JSON; return dicts, lists, strings, numbers, booleans or None (numpy,"
            " pandas, datetime, bytes, sets and dataclasses are converted automatically)") from None


# Built once, and the C parts themselves: `json.dumps` with options builds an encoder per call,
# `JSONEncoder.encode` builds a C encoder per call, `json.loads(bytes)` sniffs the encoding and
# `JSONDecoder.decode` runs two regular expressions around the scan; on the warm path these were
# most of a call's Python time. Without the encoder's circular reference check (markers=None) a
# cycle is a RecursionError, which `encode` reports.
ENCODE = json.encoder.c_make_encoder(
    None, to_json_compatible, json.encoder.encode_basestring, None, ":", ",", False, False, False)
DECODER = json.JSONDecoder()
SCAN = DECODER.scan_once


def decode(text):
    """A value from its JSON text: the C scanner alone for compact text (call arguments, state
    values), `DECODER.decode` for the rest, which raises ValueError naming what is wrong."""
    try:
        value, end = SCAN(text, 0)
    except StopIteration:  # leading whitespace, or not JSON: decode() says which
        end = -1
    return value if end == len(text) else DECODER.decode(text)


def encode(value):
    """JSON bytes for a return value or state value; raises Unencodable with a clear message."""
    try:
        s = "".join(ENCODE(value, 0))
    except (TypeError, ValueError, RecursionError):
        try:
            s = json.dumps(_sanitize(value), allow_nan=False, ensure_ascii=False,
                           separators=(",", ":"))
        except RecursionError:
            raise Unencodable("the return value is nested too deeply (or is circular)") from None
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates cannot be UTF-8: they become U+FFFD rather than invalid bytes.
        return s.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")
