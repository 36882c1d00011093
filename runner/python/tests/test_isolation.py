"""isolation: a worker in a sandbox runs no user code without its Landlock domain."""

import ctypes
import errno
import json
import os
import socket
import unittest
from unittest import mock

from skython_runtime import isolation, worker
from skython_runtime.protocol import GO, LOAD_ERROR, STARTED, Channel

CREATE, RESTRICT = 444, 446


class FakeLibc:
    """The C library's `syscall` and `prctl` as far as isolation uses them: Landlock with the
    given ABI, and calls that fail with the given errno."""

    def __init__(self, abi=6, fail_create=None, fail_restrict=None):
        self.abi, self.fail_create, self.fail_restrict = abi, fail_create, fail_restrict
        self.restricted = False
        self.ruleset = None

    def prctl(self, *args):
        return 0

    def syscall(self, nr, *args):
        if nr == CREATE and args[0] is None:
            return self.abi
        if nr == CREATE:
            return self._fail(self.fail_create) if self.fail_create else self._ruleset()
        if nr == RESTRICT:
            if self.fail_restrict:
                return self._fail(self.fail_restrict)
            self.restricted = True
            return 0
        raise AssertionError(f"unexpected syscall {nr}")

    def _ruleset(self):
        r, w = os.pipe()
        os.close(w)
        self.ruleset = r
        return r

    @staticmethod
    def _fail(err):
        ctypes.set_errno(err)
        return -1


def isolate(lib, sandboxed):
    with mock.patch.object(isolation, "libc", lambda: (ctypes, lib, None)), \
            mock.patch.object(isolation, "WORKER_FILTER", b"\0" * 8 if sandboxed else None):
        isolation.isolate_from_siblings()


def closed(fd):
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


class Landlock(unittest.TestCase):
    def test_a_sandboxed_worker_enters_its_domain_and_closes_the_ruleset(self):
        lib = FakeLibc()
        isolate(lib, sandboxed=True)
        self.assertTrue(lib.restricted)
        self.assertTrue(closed(lib.ruleset))

    def test_a_failed_restrict_self_fails_a_sandboxed_worker(self):
        lib = FakeLibc(fail_restrict=errno.EPERM)
        with self.assertRaises(OSError) as cm:
            isolate(lib, sandboxed=True)
        self.assertEqual(cm.exception.errno, errno.EPERM)
        self.assertIn("entering a Landlock domain", str(cm.exception))
        self.assertTrue(closed(lib.ruleset))

    def test_a_failed_create_ruleset_fails_a_sandboxed_worker(self):
        with self.assertRaises(OSError) as cm:
            isolate(FakeLibc(fail_create=errno.ENOMEM), sandboxed=True)
        self.assertIn("creating a Landlock ruleset", str(cm.exception))

    def test_without_a_sandbox_landlock_is_best_effort(self):
        isolate(FakeLibc(fail_restrict=errno.EPERM), sandboxed=False)

    def test_a_kernel_without_scopes_is_left_alone(self):
        for abi in (5, -1):
            lib = FakeLibc(abi=abi, fail_restrict=errno.EPERM)
            isolate(lib, sandboxed=True)
            self.assertIsNone(lib.ruleset)


class WorkerStart(unittest.TestCase):
    def test_a_worker_that_cannot_isolate_itself_says_so_and_loads_nothing(self):
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the worker, as the zygote forks it
            code = 0
            try:
                ours.close()
                failure = OSError(errno.EPERM, "sandbox: entering a Landlock domain: denied")
                with mock.patch.object(isolation, "separate_from_siblings"), \
                        mock.patch.object(isolation, "isolate_from_siblings",
                                          side_effect=failure):
                    worker.worker_main(theirs.detach(), {"source": "raise SystemExit(3)\n"})
            except BaseException:  # noqa: BLE001
                code = 1
            finally:
                os._exit(code)
        theirs.close()
        chan = Channel(ours)
        self.addCleanup(ours.close)
        self.assertEqual(chan.recv()[0], STARTED)
        chan.queue(GO)
        chan.flush()
        kind, payload = chan.recv()
        self.assertEqual(kind, LOAD_ERROR)
        message = json.loads(payload)["message"]
        self.assertIn("could not isolate the worker", message)
        self.assertIn("entering a Landlock domain", message)
        self.assertEqual(os.waitpid(pid, 0)[1], 0, "it returned without loading the source")


if __name__ == "__main__":
    unittest.main()
