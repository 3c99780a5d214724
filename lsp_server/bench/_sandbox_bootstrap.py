"""Runs first inside every sandboxed process: isolate, drop privileges, set limits, then run the untrusted program.

sandbox.py starts it as `python -I -S -B _sandbox_bootstrap.py CONFIG_JSON` in a new session, with the program's
output file as stdout/stderr and a status pipe on config["status_fd"]. Standard library only: nothing of the
package is importable here, and the interpreter may be a different Python than the runner's.

Protocol on the status pipe: one JSON line describing the isolation achieved, written before the program starts
(so a hostile program cannot suppress it), then the line "completed" once the program has returned normally. The
parent counts a pass only on "completed": sys.exit() or os._exit() inside a program is never a pass, as in the
reference harness, which runs check() in-process and treats SystemExit as a failure.
"""

import ctypes
import json
import os
import re
import builtins
import resource
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
# Per-mount options kept when a mount is made read-only (the kernel would otherwise reset them).
PRESERVED_MOUNT_OPTIONS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
                           "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
LINUX_CAPABILITY_VERSION_3 = 0x20080522
NAMESPACE_ID = 1000  # what the invoking user is called inside its user namespace when unprivileged


class _CapabilityHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapabilityData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _encode(value):
    return None if value is None else os.fsencode(value)


def _mount(source, target, fstype, flags, data=None) -> None:
    _check(_libc.mount(_encode(source), _encode(target), _encode(fstype), flags, _encode(data)), f"mount {target}")


def _prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, value, 0, 0, 0), f"prctl({option})")


def _try_unshare(flag: int, what: str, notes: list) -> bool:
    if _libc.unshare(flag) == 0:
        return True
    notes.append(f"unshare({what}) failed: {os.strerror(ctypes.get_errno())}")
    return False


def _mount_points() -> list:
    """(mount point, per-mount options) of every mount visible to this process, parents before children."""
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), fields[4])
            points.append((point, fields[5].split(",")))
    return points


def _make_filesystem_readonly(scratch: str, scratch_mb: int, uid: int, gid: int, notes: list) -> bool:
    """In a private mount namespace: every mount read-only and nosuid, the scratch directory a fresh small tmpfs."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates back to the host
    all_readonly = True
    for point, options in _mount_points():
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID
        for option in options:
            flags |= PRESERVED_MOUNT_OPTIONS.get(option, 0)
        try:
            _mount(None, point, None, flags)
        except OSError as error:
            all_readonly = False
            notes.append(f"could not make {point} read-only: {error.strerror}")
    _mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV, f"size={scratch_mb}m,mode=0700,uid={uid},gid={gid}")
    return all_readonly


def _relay_exit_status(child: int) -> None:
    """Outside the new PID namespace: wait for its init (the program) and exit the way it did."""
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


def _set_limits(limits: dict) -> None:
    cpu = limits["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU at the soft limit, SIGKILL one second later
    for name, value in (("RLIMIT_AS", limits["memory_mb"] << 20), ("RLIMIT_FSIZE", limits["file_size_mb"] << 20),
                        ("RLIMIT_NOFILE", limits["open_files"]), ("RLIMIT_NPROC", limits["processes"])):
        resource.setrlimit(getattr(resource, name), (value, value))


def _install_python_guard(scratch: str) -> None:
    """Python-level second line of defence: refuse writes outside the scratch directory and any network use.

    Not a boundary on its own (a subprocess or ctypes bypasses it); the OS-level isolation is."""
    scratch_root = os.path.realpath(scratch)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    path_arguments = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.mkfifo": (0,), "os.mknod": (0,),
                      "os.rename": (0, 1), "os.link": (0, 1), "os.symlink": (1,), "os.truncate": (0,),
                      "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,)}
    network_events = {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
                      "socket.gethostbyname", "socket.gethostbyaddr"}

    def require_inside(path) -> None:
        if isinstance(path, int):  # an already open descriptor
            return
        real = os.path.realpath(os.fsdecode(path))
        if real != scratch_root and not real.startswith(scratch_root + os.sep) and real != os.devnull:
            raise PermissionError(f"sandbox: writing outside the scratch directory is not allowed: {real}")

    def guard(event: str, args: tuple) -> None:
        if event == "open":
            if args[2] & write_flags:
                require_inside(args[0])
        elif event in path_arguments:
            for index in path_arguments[event]:
                require_inside(args[index])
        elif event in network_events:
            raise PermissionError("sandbox: network access is not allowed")

    sys.addaudithook(guard)


def _enter_user_namespace(notes: list) -> bool:
    """Unprivileged: a user namespace, in which the invoking user is NAMESPACE_ID, grants the right to create the
    other namespaces. Its capabilities reach nothing outside them and are dropped before the program runs."""
    uid, gid = os.getuid(), os.getgid()
    if not _try_unshare(CLONE_NEWUSER, "CLONE_NEWUSER", notes):
        return False
    try:
        for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{NAMESPACE_ID} {uid} 1"),
                           ("/proc/self/gid_map", f"{NAMESPACE_ID} {gid} 1")):
            with open(path, "w") as mapping:
                mapping.write(text)
    except OSError as error:  # an unmapped user namespace grants nothing usable: go on without namespaces
        notes.append(f"could not map the user into its namespace: {error}")
        return False
    return True


def _drop_capabilities() -> None:
    """Clear every capability (setuid away from root already did; inside a user namespace this is what does)."""
    header = _CapabilityHeader(LINUX_CAPABILITY_VERSION_3, 0)
    _check(_libc.capset(ctypes.byref(header), (_CapabilityData * 2)()), "capset")


def main() -> None:
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the runner, even if it is killed
    config = json.loads(sys.argv[1])
    scratch, limits, uid, gid = config["scratch"], config["limits"], config["uid"], config["gid"]
    status = os.fdopen(config["status_fd"], "w")
    os.set_inheritable(status.fileno(), False)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with open(config["program"], "rb") as program_file:  # read before privileges are dropped
        source = program_file.read()

    notes = []
    is_root = os.geteuid() == 0
    program_uid = uid if is_root else os.getuid()  # as seen from outside any namespace
    network = pid_namespace = readonly = False
    if not config["namespaces"]:
        notes.append("namespaces disabled by configuration")
    elif is_root or _enter_user_namespace(notes):
        network = _try_unshare(CLONE_NEWNET, "CLONE_NEWNET", notes)
        _try_unshare(CLONE_NEWIPC, "CLONE_NEWIPC", notes)
        if _try_unshare(CLONE_NEWNS, "CLONE_NEWNS", notes):
            owner = (uid, gid) if is_root else (NAMESPACE_ID, NAMESPACE_ID)
            try:
                readonly = _make_filesystem_readonly(scratch, limits["scratch_mb"], *owner, notes)
            except OSError as error:  # half done is still no less strict; the scratch directory stays on disk
                notes.append(f"no read-only view: {error}")
        pid_namespace = _try_unshare(CLONE_NEWPID, "CLONE_NEWPID", notes)
    if pid_namespace:
        child = os.fork()  # the child is init of the new namespace: when it exits, the kernel kills the rest
        if child:
            status.close()
            _relay_exit_status(child)
        if readonly:  # a /proc that shows only this namespace's processes
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)

    if is_root:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    _drop_capabilities()
    _prctl(PR_SET_NO_NEW_PRIVS, 1)  # no setuid binary or file capability can give privileges back
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # again: fork and setuid clear it
    _set_limits(limits)
    os.chdir(scratch)
    program_path = os.path.join(scratch, "program.py")
    with open(program_path, "wb") as program_file:
        program_file.write(source)
    _install_python_guard(scratch)

    status.write(json.dumps({"uid": program_uid, "dropped_privileges": is_root,
                             "network_namespace": network, "pid_namespace": pid_namespace,
                             "readonly_filesystem": readonly, "python_guard": True, "notes": notes}) + "\n")
    status.flush()
    program_pid = os.getpid()
    sys.argv = [program_path]
    code = compile(source, program_path, "exec")  # not runpy: it imports lazily, after the stdlib may be unreadable
    exec(code, {"__name__": "__main__", "__file__": program_path, "__builtins__": builtins})
    if os.getpid() == program_pid:  # not a child the program forked, which returns here too
        status.write("completed\n")
        status.flush()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # the program may have closed its own output
            pass
    os._exit(0)  # skip whatever the program registered to run at exit; its verdict is already written


if __name__ == "__main__":
    main()
