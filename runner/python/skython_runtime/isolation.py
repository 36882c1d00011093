"""What a process forked from a sandboxed zygote does to itself before it runs anything of a
function's: namespaces and mounts of its own, no capabilities, the workers' seccomp filter,
Landlock scoping, not dumpable. The sandbox itself (namespaces, mounts, the zygote's filters) is runner/src/sandbox.rs.

Outside a sandbox (`--insecure-no-sandbox`, or a restricted Kubernetes pod) there is no workers'
filter and the steps that depend on the sandbox do nothing.
"""

import functools
import os
import signal
import struct

# The workers' seccomp program (raw `struct sock_filter`s), read once by a sandboxed zygote
# (`load_worker_filter`); None outside a sandbox.
WORKER_FILTER = None


def load_worker_filter():
    """Reads the workers' seccomp program from the descriptor the sandbox passed, once."""
    global WORKER_FILTER
    fd = os.environ.pop("SKYTHON_WORKER_SECCOMP_FD", None)
    if fd is None:
        return
    with open(int(fd), "rb") as f:
        program = f.read()
    if not program or len(program) % 8:
        raise SystemExit(f"skython: the workers' seccomp program is {len(program)} bytes")
    WORKER_FILTER = program


def sandboxed():
    return WORKER_FILTER is not None


@functools.cache  # loaded once in the zygote; forked workers inherit it
def libc():
    """ctypes, the C library, and `call(name, *args, what=...)`, which raises OSError on failure."""
    import ctypes
    lib = ctypes.CDLL(None, use_errno=True)

    def call(fn, *args, what):
        if getattr(lib, fn)(*args) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"sandbox: {what}: {os.strerror(err)}")
    return ctypes, lib, call


def not_dumpable():
    """No reading this process's memory or /proc files by others of the same uid."""
    libc()[1].prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 0


def die_with_parent():
    try:
        libc()[1].prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort: the worker also exits on EOF
        pass


# Flags of unshare(2) and mount(2).
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWNET = 0x20000, 0x08000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 1 << 14, 1 << 18


def separate_from_siblings():
    """Workers of every function share their runtime's zygote and sandbox. Before any user code,
    a worker gives itself kernel objects of its own (see runner/src/sandbox.rs, WORKER_NAMESPACES):
    - a mount namespace with private, size-capped `/tmp` and `/dev/shm` (tmpfs: their pages are
      charged to the worker's memory cgroup, and they vanish with it), its own pseudo-terminals,
      and `/proc/sys` read-only (the sandbox's kernel settings are everyone's);
    - an IPC namespace (System V shared memory, semaphores, message queues, POSIX queues);
    - a network namespace whose only interface is its own loopback (its listeners, and abstract
      Unix sockets, are its own; the egress relay, when the function may go out, lives there).
    Then it gives up the capabilities the zygote kept for this and installs the workers' seccomp
    filter. Outside a sandbox (no filter) there is nothing to separate from."""
    if WORKER_FILTER is None:
        return
    ctypes, _, call = libc()
    ul = ctypes.c_ulong
    call("unshare", ctypes.c_int(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWNET),
         what="unshare(mount, IPC and network namespaces)")
    call("mount", b"none", b"/", None, ul(MS_REC | MS_PRIVATE), None, what="making mounts private")
    for path, env in ((b"/tmp", "SKYTHON_WORKER_TMP_BYTES"), (b"/dev/shm", "SKYTHON_WORKER_SHM_BYTES")):
        size = int(os.environ.get(env) or 64 << 20)
        call("mount", b"tmpfs", path, b"tmpfs", ul(MS_NOSUID | MS_NODEV),
             f"size={size},mode=1777".encode(), what=f"mounting a private {path.decode()}")
    call("mount", b"devpts", b"/dev/pts", b"devpts", ul(MS_NOSUID | MS_NOEXEC),
         b"newinstance,ptmxmode=0666,mode=0620", what="mounting private pseudo-terminals")
    call("mount", b"/proc/sys", b"/proc/sys", None, ul(MS_BIND | MS_REC), None,
         what="binding /proc/sys")
    call("mount", None, b"/proc/sys", None,
         ul(MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC), None,
         what="making /proc/sys read-only")
    _loopback_up()
    os.chdir("/tmp")


def _loopback_up():
    """A new network namespace's loopback is down: bring it up (SIOCGIFFLAGS, SIOCSIFFLAGS)."""
    import fcntl
    import socket
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    ifreq = struct.Struct("16sH14s")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = ifreq.unpack(fcntl.ioctl(s, siocgifflags, ifreq.pack(b"lo", 0, b"")))[1]
        fcntl.ioctl(s, siocsifflags, ifreq.pack(b"lo", flags | iff_up, b""))


def null_stdio():
    """Descriptors 0-2 become /dev/null: what a worker inherits from the zygote there (its stderr
    is a pipe the gateway logs) is not the worker's to read or write. A function's output is
    captured per call at the Python level."""
    fd = os.open("/dev/null", os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(fd, target)
    if fd > 2:
        os.close(fd)


def drop_privileges():
    """Gives up the capabilities a sandboxed zygote keeps, for good (no_new_privs: no exec can
    bring them back), and adds the workers' seccomp filter."""
    if WORKER_FILTER is None:
        return
    ctypes, _, call = libc()
    ul = ctypes.c_ulong
    pr_cap_ambient, pr_cap_ambient_clear_all = 47, 4
    call("prctl", ctypes.c_int(pr_cap_ambient), ul(pr_cap_ambient_clear_all), ul(0), ul(0), ul(0),
         what="clearing ambient capabilities")
    header = ctypes.create_string_buffer(struct.pack("=Ii", 0x20080522, 0))  # version 3, self
    call("capset", header, ctypes.create_string_buffer(24), what="dropping capabilities")
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    call("prctl", ctypes.c_int(pr_set_no_new_privs), ul(1), ul(0), ul(0), ul(0),
         what="setting no_new_privs")

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    program = ctypes.create_string_buffer(WORKER_FILTER, len(WORKER_FILTER))
    fprog = SockFprog(len(WORKER_FILTER) // 8, ctypes.cast(program, ctypes.c_void_p))
    call("prctl", ctypes.c_int(pr_set_seccomp), ul(seccomp_mode_filter), ctypes.byref(fprog),
         ul(0), ul(0), what="installing the seccomp filter")


# The first Landlock ABI with scopes (signals, abstract Unix sockets): Linux 6.12.
LANDLOCK_SCOPES_ABI = 6
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_RESTRICT_SELF = 444, 446  # on every architecture


def isolate_from_siblings():
    """No reading other workers' memory or /proc files (not dumpable), no signals to other
    processes and no connecting to their abstract sockets (a Landlock domain of this worker's
    own, Linux 6.12+). The Landlock domain also keeps the worker from ptrace-class access (such
    as /proc/<pid>/mem) to anything outside it, the zygote included.

    In a sandbox on a kernel with scopes, a domain that cannot be made fails the worker (raises
    OSError): it must not run user code without it. Outside a sandbox no_new_privs is not set,
    so the kernel refuses the domain to an unprivileged process; there it is best effort."""
    not_dumpable()
    if landlock_abi() < LANDLOCK_SCOPES_ABI:
        return
    try:
        restrict_with_landlock()
    except OSError:
        if sandboxed():
            raise


def landlock_abi():
    """The kernel's Landlock ABI version, or a negative number without Landlock."""
    ctypes, lib, _ = libc()
    return lib.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))


def restrict_with_landlock():
    """Puts this process in a Landlock domain of its own that scopes signals and abstract Unix
    sockets to the domain."""
    ctypes, lib, _ = libc()
    scope_abstract_unix_socket, scope_signal = 1 << 0, 1 << 1
    attr = ctypes.create_string_buffer(
        struct.pack("=QQQ", 0, 0, scope_abstract_unix_socket | scope_signal))
    fd = lib.syscall(_SYS_LANDLOCK_CREATE_RULESET, attr, ctypes.c_size_t(24), ctypes.c_uint32(0))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sandbox: creating a Landlock ruleset: {os.strerror(err)}")
    try:
        if lib.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(fd), ctypes.c_uint32(0)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"sandbox: entering a Landlock domain: {os.strerror(err)}")
    finally:
        os.close(fd)
