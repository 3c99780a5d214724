"""Execution of untrusted programs (model output) in a sandbox: one process each, limited, isolated, cleaned up.

Every program runs in its own session under `_sandbox_bootstrap.py`, which isolates the process before the
program starts; the runner waits with a wall-clock timeout and then kills the whole process group. Layers, each
reported per program in `ExecutionResult.isolation`:

- Resource limits (always): address space, CPU seconds, processes, file size (which also caps the captured
  output), open files, no core dumps; a wall-clock timeout; a fresh scratch directory as cwd, HOME and TMPDIR.
- As root: the program runs as a dedicated unused uid/gid (one per parallel slot, claimed with a lock file so
  concurrent runs never share one) with no supplementary groups and no_new_privs. RLIMIT_NPROC then applies (root
  ignores it), and after each program every process of that uid is killed, so nothing a program started survives.
- Namespaces where the kernel allows them: a new network namespace (no interface but a down loopback, so no
  network at all), IPC and PID namespaces (the program is init; when it exits the kernel kills the rest), and as
  a mount namespace in which every mount is read-only and nosuid and the scratch directory is a small tmpfs.
  Unprivileged, a user namespace is entered first to create them; its capabilities are dropped before the program.
- A Python audit hook refusing writes outside the scratch directory and socket use (second line of defence).

Not covered: kernel exploits; CPU and memory bandwidth taken from other work within the limits. Where the kernel
refuses the namespaces, what they give is missing and the results say so: a subprocess can then reach the network
and write wherever the program's user may (as root, world-writable places only; unprivileged, also the invoking
user's files), and, unprivileged, a process that leaves the process group survives until its CPU limit.
"""

from __future__ import annotations

import fcntl
import grp
import json
import os
import pwd
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from lsp_server.bench import BenchError

BOOTSTRAP = Path(__file__).with_name("_sandbox_bootstrap.py")
# Dedicated uids for sandboxed programs: far above regular accounts and the usual subordinate-uid ranges, and
# each is only used when no account names it.
SANDBOX_UID_BASE = 2_000_000_000
SANDBOX_UID_COUNT = 4096
OUTPUT_TAIL_BYTES = 2000
KILL_ROUNDS = 50
# Imports modules the bootstrap does not load itself: proves the sandbox user can read the standard library.
PROBE_PROGRAM = "import decimal, fractions, heapq, statistics\nassert statistics.mean([1, 2, 3]) == 2\n"


class SandboxError(BenchError):
    """The sandbox itself failed (as opposed to the program in it)."""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 3.0  # wall clock from process start, as in the reference harness
    memory_mb: int = 1024  # address space
    processes: int = 32  # processes and threads of the sandbox user
    file_size_mb: int = 16  # largest file the program may write, its captured output included
    open_files: int = 256
    scratch_mb: int = 64  # size of the scratch tmpfs where a mount namespace is available

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"sandbox limit {name} must be positive, got {value!r}")

    @property
    def cpu_seconds(self) -> int:
        return int(self.timeout_s) + 1


@dataclass(frozen=True)
class ExecutionResult:
    status: str  # "passed", "failed" or "timeout"
    exit_code: int | None  # negative: killed by that signal
    duration_ms: float
    output_tail: str  # the end of stdout and stderr together
    isolation: dict = field(default_factory=dict)  # what the bootstrap achieved; empty if it never got that far
    leftover_processes_killed: int = 0

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class _Slot:
    uid: int | None  # None: run as the invoking user
    lock_fd: int | None = None


class Sandbox:
    """Runs Python programs one process each; `run` may be called from `slots` threads at once."""

    def __init__(self, limits: SandboxLimits = SandboxLimits(), *, slots: int = 1, python: str | None = None,
                 namespaces: bool = True) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self.limits = limits
        self.slots = slots
        self.namespaces = namespaces
        self.privileged = os.geteuid() == 0
        self._slots: queue.Queue[_Slot] = queue.Queue()
        leased = _lease_uids(slots) if self.privileged else [_Slot(None)] * slots
        self.uids = tuple(slot.uid for slot in leased if slot.uid is not None)  # the programs' uids, as root
        for slot in leased:
            self._slots.put(slot)
        try:
            self.python = self._choose_python(python)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        while not self._slots.empty():
            slot = self._slots.get_nowait()
            if slot.lock_fd is not None:
                os.close(slot.lock_fd)

    def run(self, source: str) -> ExecutionResult:
        slot = self._slots.get()
        try:
            return self._run_in_slot(slot, self.python, source)
        finally:
            self._slots.put(slot)

    def _choose_python(self, requested: str | None) -> str:
        """The interpreter for programs: the requested one, else this one, else python3 on PATH, whichever the
        sandbox user can run (this one may live where an unprivileged user cannot read it)."""
        candidates = [requested] if requested else _python_candidates()
        failures = []
        slot = self._slots.get()
        try:
            for python in candidates:
                try:
                    result = self._run_in_slot(slot, python, PROBE_PROGRAM)
                except SandboxError as error:
                    failures.append(f"{python}: {error}")
                    continue
                if result.passed:
                    return python
                failures.append(f"{python}: {result.status}, exit code {result.exit_code}: {result.output_tail}")
        finally:
            self._slots.put(slot)
        raise SandboxError("no Python interpreter can run programs in the sandbox"
                           + (" as an unprivileged user" if self.privileged else "") + ":\n" + "\n".join(failures))

    def _run_in_slot(self, slot: _Slot, python: str, source: str) -> ExecutionResult:
        run_dir = Path(tempfile.mkdtemp(prefix="diffgemma-sandbox-"))
        try:
            config = self._prepare(run_dir, slot, source)
            output_path = run_dir / "output.log"
            status_read, status_write = os.pipe()
            try:
                config["status_fd"] = status_write
                with open(output_path, "wb") as output:
                    started = time.monotonic()
                    try:
                        process = subprocess.Popen(
                            [python, "-I", "-S", "-B", str(BOOTSTRAP), json.dumps(config)], stdin=subprocess.DEVNULL,
                            stdout=output, stderr=subprocess.STDOUT, cwd=run_dir, env=_environment(config["scratch"]),
                            start_new_session=True, pass_fds=(status_write,))
                    except OSError as error:
                        raise SandboxError(f"cannot start the sandbox with {python}: {error}") from None
                    finally:
                        os.close(status_write)
                timed_out = False
                try:
                    process.wait(timeout=self.limits.timeout_s)
                except subprocess.TimeoutExpired:
                    timed_out = True
                finally:
                    _kill_process_group(process.pid)
                    process.wait()
                duration_ms = (time.monotonic() - started) * 1000.0
                killed = _kill_processes_of(slot.uid) if slot.uid is not None else 0
                status_lines = _read_available(status_read).splitlines()
            finally:
                os.close(status_read)
            output_tail = _tail(output_path)
        finally:
            shutil.rmtree(run_dir)

        if not status_lines and not timed_out:
            raise SandboxError(f"the sandbox failed to start the program (exit code {process.returncode}):\n"
                               f"{output_tail}")
        if timed_out:
            status = "timeout"
        elif "completed" in status_lines[1:] and process.returncode == 0:
            status = "passed"
        else:
            status = "failed"
        return ExecutionResult(status=status, exit_code=None if timed_out else process.returncode,
                               duration_ms=duration_ms, output_tail=output_tail,
                               isolation=json.loads(status_lines[0]) if status_lines else {},
                               leftover_processes_killed=killed)

    def _prepare(self, run_dir: Path, slot: _Slot, source: str) -> dict:
        """Lay out the run directory; returns the bootstrap's configuration (all but the status descriptor)."""
        run_dir.chmod(0o711)  # the sandbox user may reach scratch/ but list and read nothing else here
        program = run_dir / "program.py"
        with open(os.open(program, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as out:
            out.write(source)
        scratch = run_dir / "scratch"
        scratch.mkdir(mode=0o700)
        if slot.uid is not None:
            os.chown(scratch, slot.uid, slot.uid)
        limits = {"cpu_seconds": self.limits.cpu_seconds, "memory_mb": self.limits.memory_mb,
                  "file_size_mb": self.limits.file_size_mb, "open_files": self.limits.open_files,
                  "scratch_mb": self.limits.scratch_mb, "processes": self._process_limit(slot)}
        return {"program": str(program), "scratch": str(scratch), "uid": slot.uid, "gid": slot.uid,
                "namespaces": self.namespaces, "limits": limits}

    def _process_limit(self, slot: _Slot) -> int:
        if slot.uid is not None:
            return self.limits.processes
        # RLIMIT_NPROC counts every process of the invoking user: leave room for those already running.
        return len(_live_processes_of(os.getuid())) + self.limits.processes


def _environment(scratch: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch, "LANG": "C.UTF-8"}


def _python_candidates() -> list[str]:
    """This interpreter, then every python3 on PATH, each real file once."""
    paths = [sys.executable] + [os.path.join(directory, "python3")
                                for directory in os.environ.get("PATH", os.defpath).split(os.pathsep) if directory]
    unique = {}
    for path in paths:
        if os.access(path, os.X_OK):
            unique.setdefault(os.path.realpath(path), path)
    return list(unique.values())


def _lease_uids(count: int) -> list[_Slot]:
    """Claim `count` dedicated uids, each held by an exclusive lock for as long as its descriptor is open."""
    lock_dir = Path(tempfile.gettempdir()) / "diffgemma-bench-sandbox-uids"
    lock_dir.mkdir(mode=0o700, exist_ok=True)
    info = lock_dir.lstat()
    if not lock_dir.is_dir() or lock_dir.is_symlink() or info.st_uid != 0 or info.st_mode & 0o077:
        raise SandboxError(f"{lock_dir} must be a directory owned by root and private to it")
    slots: list[_Slot] = []
    for uid in range(SANDBOX_UID_BASE, SANDBOX_UID_BASE + SANDBOX_UID_COUNT):
        if len(slots) == count:
            break
        if _has_account(uid):
            continue
        lock_fd = os.open(lock_dir / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            continue
        _kill_processes_of(uid)  # whatever a crashed earlier run left behind under this uid
        slots.append(_Slot(uid, lock_fd))
    if len(slots) < count:
        for slot in slots:
            os.close(slot.lock_fd)
        raise SandboxError(f"could not claim {count} free sandbox uids from {SANDBOX_UID_BASE}")
    return slots


def _has_account(uid: int) -> bool:
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except KeyError:
            pass
    return False


def _process_owner_and_state(pid: int) -> tuple[int, str] | None:
    """(real uid, state letter) of a process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(fields["Uid"].split()[0]), fields["State"].strip()[:1]


def _live_processes_of(uid: int) -> list[int]:
    """Processes whose real uid is `uid`, zombies excluded (they hold nothing and cannot be killed)."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            owner_and_state = _process_owner_and_state(int(entry.name))
            if owner_and_state is not None and owner_and_state[0] == uid and owner_and_state[1] != "Z":
                pids.append(int(entry.name))
    return pids


def _kill_processes_of(uid: int) -> int:
    """SIGKILL every process of `uid` until none is left; returns how many were killed.

    Each is signalled through a pidfd opened before its owner is checked, so a recycled pid is never hit."""
    killed = 0
    for _ in range(KILL_ROUNDS):
        pids = _live_processes_of(uid)
        if not pids:
            return killed
        for pid in pids:
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            try:
                owner_and_state = _process_owner_and_state(pid)
                if owner_and_state is not None and owner_and_state[0] == uid:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    killed += 1
            except ProcessLookupError:
                pass
            finally:
                os.close(pidfd)
        time.sleep(0.01)
    raise SandboxError(f"processes of sandbox uid {uid} survived {KILL_ROUNDS} rounds of SIGKILL: "
                       f"{_live_processes_of(uid)}")


def _kill_process_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _read_available(fd: int) -> str:
    """What the bootstrap wrote to the status pipe; never blocks (a leftover writer cannot hold the runner)."""
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


def _tail(path: Path) -> str:
    with open(path, "rb") as output:
        output.seek(max(0, path.stat().st_size - OUTPUT_TAIL_BYTES))
        return output.read().decode("utf-8", errors="replace")
