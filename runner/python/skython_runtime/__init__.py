"""Skython's Python side: the zygote and the workers it forks.

The gateway starts this package once per runtime profile (`python -m skython_runtime`) with a Unix
socket on fd 3. The zygote imports the runtime libraries and does their first-use work once, then
forks a worker per request; a worker loads one function's source and serves calls on its own
socket until the gateway closes it. The wire format is described in runner/PROTOCOL.md.

Modules, by concern: `protocol` (frames and channels), `codec` (JSON of values), `inspection`
(reading a source without running it), `worker` (loading and calling a function), `isolation`
(what a worker does to itself before user code), `state_cache` (a worker's cache of its
function's state), `relay` (the egress relay), `zygote` (preload and the request loop). Each is imported once: `__main__` only calls `zygote.main`, and the
`skython` library imports from these same modules.
"""
