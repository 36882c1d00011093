"""Skython's meta library for functions: state that persists per user and per function.

    from skython import store, load

    def count():
        n = load("n", 0) + 1
        store("n", n)
        return n

Values are anything JSON can hold (numpy and pandas values are converted as return values are).
Keys are strings. State belongs to the function's owner and the function itself: two functions, or
two owners, never see each other's keys. Each call is one round trip to the gateway.
"""

__all__ = ["store", "load", "delete", "keys", "StateError"]

# The runtime's own modules, which the zygote imported before this one: one copy of each.
from skython_runtime.codec import DECODER as _DECODER
from skython_runtime.codec import Unencodable as _Unencodable
from skython_runtime.codec import encode as _encode

# Set by the worker process that loads the function; None outside Skython.
_worker = None

MAX_KEY_CHARS = 512


class StateError(Exception):
    """A state call was refused (bad key, value too large, storage unavailable)."""


def _request(op, **fields):
    if _worker is None:
        raise RuntimeError("skython.store/load only work inside a function running on Skython")
    answer = _worker.state(op, **fields)
    if not answer.get("ok"):
        err = answer.get("error") or {}
        raise StateError(err.get("message", "the state request failed"))
    return answer


def _check_key(key):
    if not isinstance(key, str):
        raise TypeError(f"state keys must be str, not {type(key).__name__}")
    if not key or len(key) > MAX_KEY_CHARS:
        raise StateError(f"state keys must be 1-{MAX_KEY_CHARS} characters, got {len(key)}")


def store(key, value):
    """Saves `value` under `key`, replacing what was there."""
    _check_key(key)
    try:
        data = _encode(value)
    except _Unencodable as e:
        raise StateError(str(e).replace("the return value", "the stored value")) from None
    limit = _worker.spec.get("maxStateValueBytes") if _worker else None
    if limit and len(data) > limit:
        raise StateError(
            f"the value for {key!r} encodes to {len(data)} bytes of JSON, more than the limit"
            f" of {limit} bytes")
    # The value travels as JSON text inside the request so the gateway stores it unparsed.
    _request("store", key=key, value=data.decode("utf-8", "surrogatepass"))


def load(key, default=None):
    """The value saved under `key`, or `default` if there is none."""
    _check_key(key)
    answer = _request("load", key=key)
    if not answer.get("found"):
        return default
    return _DECODER.decode(answer["value"])


def delete(key):
    """Removes `key`; returns whether it existed."""
    _check_key(key)
    return bool(_request("delete", key=key).get("found"))


def keys(prefix=""):
    """The function's keys that start with `prefix`, sorted."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be str, not {type(prefix).__name__}")
    return list(_request("keys", prefix=prefix).get("keys", []))
