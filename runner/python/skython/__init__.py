"""Skython's meta library for functions: state that persists per user and per function, and
who called.

    from skython import incr, load, store

    def visit(page: str):
        return incr(page)  # this page's visits so far, this one included

Values are anything JSON can hold (numpy and pandas values are converted as return values are).
Keys are strings. State belongs to the function's owner and the function itself: two functions, or
two owners, never see each other's keys. Each call is one round trip to the gateway, except where
the gateway lets workers cache the state: there a plain `store` returns at once, and a `load` of a
key the worker knows is answered from its cache (kept up to date with the other calls' writes).

Concurrent calls share the state, so what several of them write at once matters:
- `store(key, value)`: the last writer wins; every write is kept whole, never mixed with another.
- `incr(key, by=1, default=0)` is atomic: concurrent increments all count, and each caller gets
  the value its own increment made.
- `store(key, value, expect=old)` is atomic: it writes only if the key still holds `old` (`None`
  also matches a missing key) and returns whether it did, so of concurrent callers expecting the
  same value exactly one wins.
- A read-modify-write with `load` then `store` is NOT atomic: another call may store in between,
  and its write is lost. Use `incr`, or retry `store(..., expect=)` until it wins.

A refused state call raises `StateError` (bad key, value too large, quota); `StateUnavailable`, a
`StateError`, when the storage cannot be reached: a call that lets it escape answers HTTP 503
`state_unavailable`, and may be retried.

Runs as: a call always runs as its function's owner, with the owner's state, limits and
secrets, whoever called it. `caller()` says who that was, for the function's own checks (a
per-user quota kept in the state, say); it is never the caller's state or credentials:

    from skython import caller, incr

    def ask(question: str):
        who = caller()  # e.g. {"kind": "user", "name": "alice"}
        if who["kind"] != "user":
            raise PermissionError("sign in to ask")
        if incr(f"asked/{who['name']}") > 100:  # the owner's state, counted per caller
            raise PermissionError("100 questions at most")
        ...
"""

__all__ = ["store", "load", "incr", "delete", "keys", "caller", "StateError", "StateUnavailable"]

import math

# The runtime's own modules, which the zygote imported before this one: one copy of each.
from skython_runtime.codec import Unencodable as _Unencodable
from skython_runtime.codec import decode as _decode
from skython_runtime.codec import encode as _encode
from skython_runtime.state_cache import MISS as _MISS

# Set by the worker process that loads the function; None outside Skython.
_worker = None

MAX_KEY_CHARS = 512

# The numbers `incr` takes: those the gateway adds exactly (64-bit integers) or as floats.
_INT_RANGE = range(-(2**63), 2**63)

# `store` without `expect` (None is an expectation: "no value").
_NOT_GIVEN = object()


class StateError(Exception):
    """A state call was refused (bad key, value too large, quota exceeded, incr of a non-number)."""


class StateUnavailable(StateError):
    """The state storage cannot be reached right now; the same call may work later."""


def _request(op, **fields):
    if _worker is None:
        raise RuntimeError("skython's state functions only work inside a function running on Skython")
    answer = _worker.state(op, **fields)
    if not answer.get("ok"):
        err = answer.get("error") or {}
        error = StateUnavailable if err.get("code") == "state_unavailable" else StateError
        raise error(err.get("message", "the state request failed"))
    return answer


def _check_key(key):
    if not isinstance(key, str):
        raise TypeError(f"state keys must be str, not {type(key).__name__}")
    if not key or len(key) > MAX_KEY_CHARS:
        raise StateError(f"state keys must be 1-{MAX_KEY_CHARS} characters, got {len(key)}")


def _json_text(value, what):
    try:
        data = _encode(value)
    except _Unencodable as e:
        raise StateError(str(e).replace("the return value", what)) from None
    return data


def _number(name, n):
    """`n` as the plain int or float `incr` sends; TypeError/ValueError naming `name` otherwise."""
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        raise TypeError(f"incr's {name} must be an int or a float, not {type(n).__name__}")
    if isinstance(n, int):
        if n not in _INT_RANGE:
            raise ValueError(f"incr's {name} must fit in 64 bits (signed), got {n}")
        return int(n)
    if not math.isfinite(n):
        raise ValueError(f"incr's {name} must be a finite number, got {n}")
    return float(n)


def store(key, value, expect=_NOT_GIVEN):
    """Saves `value` under `key`, replacing what was there (of concurrent writers, the last wins).

    It is durable, and seen by calls that start after this one returns, once this call returns.
    A store that cannot grow the owner's state (a key this worker knows, a value no longer than
    the one it holds) may return before the value is saved; if saving it then fails, this call
    fails with that error. Any other store waits for its answer, so one past the owner's quota
    raises StateError here.

    With `expect`, a compare-and-set: saves only if the key holds a value equal to `expect` (as
    JSON: `1 == 1.0`; `None` also matches a missing key) and returns whether it did. Atomic: of
    callers expecting the same value at once, exactly one wins.
    """
    _check_key(key)
    data = _json_text(value, "the stored value")
    limit = _worker.spec.get("maxStateValueBytes") if _worker else None
    if limit and len(data) > limit:
        raise StateError(
            f"the value for {key!r} encodes to {len(data)} bytes of JSON, more than the limit"
            f" of {limit} bytes")
    # Values travel as JSON text inside the request so the gateway stores them unparsed.
    text = data.decode("utf-8", "surrogatepass")
    cache = _worker.cache if _worker else None
    if expect is _NOT_GIVEN:
        if cache is not None and cache.cannot_grow(key, len(data)):
            cache.write(key, text)  # write-behind: the gateway answers the call once it is saved
        else:
            _request("store", key=key, value=text)
            if cache is not None:
                cache.settle(key, text)
        return None
    expected = _json_text(expect, "the expected value").decode("utf-8", "surrogatepass")
    won = bool(_request("store", key=key, value=text, expect=expected).get("won"))
    if cache is not None:
        if won:
            cache.settle(key, text)
        else:
            cache.forget(key)  # another value, which the answer does not tell
    return won


def incr(key, by=1, default=0):
    """Adds `by` to the number under `key` (`default` if there is none) and returns the sum.

    Atomic: concurrent increments all count, and each caller gets the value its own increment
    made. Integers stay integers (64-bit); a float makes the sum a float. Raises StateError if
    the key holds something other than a number.
    """
    _check_key(key)
    by, default = _number("by", by), _number("default", default)
    text = _request("incr", key=key, by=by, default=default)["value"]
    if _worker.cache is not None:
        _worker.cache.settle(key, text)
    return _decode(text)


def load(key, default=None):
    """The value saved under `key`, or `default` if there is none."""
    _check_key(key)
    cache = _worker.cache if _worker else None
    if cache is not None:
        text = cache.get(key)
        if text is not _MISS:
            # Decoded afresh: a caller that changes the value changes only its own copy.
            return default if text is None else _decode(text)
    answer = _request("load", key=key)
    text = answer["value"] if answer.get("found") else None
    if cache is not None:
        cache.settle(key, text)
    return default if text is None else _decode(text)


def delete(key):
    """Removes `key`; returns whether it existed."""
    _check_key(key)
    found = bool(_request("delete", key=key).get("found"))
    if _worker.cache is not None:
        _worker.cache.settle(key, None)
    return found


def keys(prefix=""):
    """The function's keys that start with `prefix`, sorted."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be str, not {type(prefix).__name__}")
    return list(_request("keys", prefix=prefix).get("keys", []))


def caller():
    """Who the running call is for, as a new dict (changing it changes nothing else):

    - `{"kind": "anonymous"}`: no credential (also outside a call, and outside Skython);
    - `{"kind": "user", "name": "alice"}`: a signed-in user, by account name;
    - `{"kind": "key", "id": "key_...", "owner": "bob", "name": "my-app"}`: an API key, by its
      id (never the key itself), the account that owns it and its name.

    The call runs with its function owner's state, limits and secrets whoever the caller is.
    """
    current = _worker.caller if _worker is not None else None
    return dict(current) if current else {"kind": "anonymous"}
