"""The sandbox runs each hostile program for real and must contain it; afterwards the machine must be as before.

Bounded for a small shared machine: 2 s wall clock, 256 MB, at most 8 processes per program."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lsp_server.bench.metrics import pass_at_k
from lsp_server.bench.sandbox import SANDBOX_UID_BASE, Sandbox, SandboxLimits, _lease_uids
from lsp_server.bench.tasks import DEFAULT_DATA_DIR, load_humaneval

REPO_ROOT = Path(__file__).resolve().parents[1]
LIMITS = SandboxLimits(timeout_s=2.0, memory_mb=256, processes=8)
IS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(LIMITS, slots=2) as sandbox:
        yield sandbox


@pytest.fixture(autouse=True)
def machine_is_fine_afterwards(sandbox):
    """No process of the shared sandbox's uids outlives a test (as root; other runs hold other uids)."""
    yield
    assert _processes_of(set(sandbox.uids)) == [], "a sandboxed process outlived its run"


def _processes_of(uids: set[int]) -> list[int]:
    """Live processes owned by these uids (read from /proc, independently of the sandbox's own bookkeeping)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields["Uid"].split()[0]) in uids and fields["State"].strip()[:1] != "Z":
            pids.append(int(entry))
    return pids


def _require(result, *layers: str) -> None:
    """Skip (naming what this machine lacks) unless one of these isolation layers was in force."""
    if not any(result.isolation.get(layer) for layer in layers):
        pytest.skip(f"this machine gives none of {', '.join(layers)} here: {result.isolation.get('notes')}")


def test_an_ordinary_program_passes_and_reports_its_isolation(sandbox):
    result = sandbox.run("import statistics\nprint(statistics.mean([1, 2, 3]))\n")
    assert result.status == "passed" and result.exit_code == 0
    assert result.output_tail.strip() == "2"
    assert result.isolation["python_guard"] is True
    assert result.isolation["dropped_privileges"] is IS_ROOT
    if IS_ROOT:
        assert result.isolation["uid"] in sandbox.uids and result.isolation["uid"] >= SANDBOX_UID_BASE


@pytest.mark.parametrize("program", ["import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n", "raise SystemExit\n"])
def test_exiting_before_the_end_is_not_a_pass(sandbox, program):
    """As in the reference harness, only a program that runs to its end passes, even if it exits with status 0."""
    result = sandbox.run(program)
    assert result.status == "failed"


def test_an_exception_fails_with_its_traceback(sandbox):
    result = sandbox.run("assert 1 + 1 == 3, 'arithmetic'\n")
    assert result.status == "failed" and result.exit_code == 1
    assert "AssertionError: arithmetic" in result.output_tail


def test_infinite_loop_is_stopped_at_the_wall_clock_limit(sandbox):
    result = sandbox.run("while True:\n    pass\n")
    assert result.status == "timeout" and not result.passed
    assert LIMITS.timeout_s * 1000 <= result.duration_ms < LIMITS.timeout_s * 1000 + 1500


def test_sleeping_forever_is_stopped_too(sandbox):
    result = sandbox.run("import time\ntime.sleep(3600)\n")
    assert result.status == "timeout"


def test_fork_bomb_is_contained_and_every_process_is_gone_afterwards(sandbox):
    started = time.monotonic()
    result = sandbox.run(textwrap.dedent("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """))
    assert result.status == "timeout"
    assert time.monotonic() - started < LIMITS.timeout_s + 3
    # The autouse fixture checks that no process of any sandbox uid is left; the next program runs normally.
    assert sandbox.run("print('still fine')\n").passed


def _processes_running(marker: str) -> list[int]:
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return pids


def test_a_detached_background_process_does_not_survive_the_run(sandbox):
    marker = f"{600 + uuid.uuid4().int % 10**6 / 10**7:.7f}"  # a unique sleep duration to find it by
    result = sandbox.run(f"import subprocess\nsubprocess.Popen(['sleep', '{marker}'], start_new_session=True)\n")
    survivors = _processes_running(marker)
    for pid in survivors:
        os.kill(pid, 9)
    _require(result, "pid_namespace", "dropped_privileges")  # what kills it: the namespace, or the uid sweep
    assert result.status == "passed"
    assert survivors == []


def test_memory_bomb_fails_fast_with_memory_error(sandbox):
    result = sandbox.run("chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 2**20))\n")
    assert result.status == "failed"
    assert "MemoryError" in result.output_tail
    assert result.duration_ms < LIMITS.timeout_s * 1000


def test_output_flood_is_capped_by_the_file_size_limit(sandbox):
    result = sandbox.run("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n")
    assert result.status == "failed"  # the write beyond RLIMIT_FSIZE raises (EFBIG) before the timeout
    assert len(result.output_tail) <= 2000


@pytest.mark.parametrize("directory", ["/tmp", "/dev/shm"])
@pytest.mark.parametrize("how", ["python open", "os.open", "shell redirection", "rename into place"])
def test_writes_outside_the_scratch_directory_fail(sandbox, directory, how):
    """World-writable directories are the hard case: only the read-only mount view and the Python guard stop
    these; a root-owned target would already be refused by the dropped privileges."""
    target = Path(directory) / f"diffgemma-bench-escape-{uuid.uuid4().hex}"
    attempts = {
        "python open": f"open({str(target)!r}, 'w').write('escaped')",
        "os.open": f"import os\nos.close(os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT))",
        "shell redirection": f"import subprocess\nsubprocess.run(['sh', '-c', 'echo escaped > {target}'], check=True)",
        "rename into place": f"open('staged', 'w').write('escaped')\nimport os\nos.rename('staged', {str(target)!r})",
    }
    program = "open('inside.txt', 'w').write('the scratch directory is writable')\n" + attempts[how] + "\n"
    try:
        result = sandbox.run(program)
        if how == "shell redirection":  # out of the Python guard's reach: only the read-only view stops it
            _require(result, "readonly_filesystem")
        assert result.status == "failed", result.output_tail
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)


def test_writes_under_a_private_directory_of_the_runner_fail(sandbox, tmp_path):
    target = tmp_path / "outside.txt"
    result = sandbox.run(f"import subprocess\nsubprocess.run(['sh', '-c', 'echo escaped > {target}'], check=True)\n")
    _require(result, "readonly_filesystem", "dropped_privileges")  # unprivileged, the runner's files are the user's
    assert result.status == "failed"
    assert not target.exists()


@pytest.fixture
def listener():
    """A TCP server on the host's loopback: a sandboxed program that reaches it has network access."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def _connection_attempts(port: int) -> dict[str, str]:
    connect = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1).close()"
    return {"in process": connect + "\n",
            "in a subprocess": f"import subprocess, sys\nsubprocess.run([sys.executable, '-I', '-S', '-c', "
                               f"{connect!r}], check=True)\n"}


def _accepted_connections(server: socket.socket) -> int:
    count = 0
    while True:
        try:
            connection, _ = server.accept()
        except BlockingIOError:
            return count
        connection.close()
        count += 1


@pytest.mark.parametrize("how", ["in process", "in a subprocess"])
def test_network_access_fails(sandbox, listener, how):
    result = sandbox.run(_connection_attempts(listener.getsockname()[1])[how])
    _require(result, "network_namespace")
    assert result.status == "failed"
    assert _accepted_connections(listener) == 0


def test_without_namespaces_only_the_python_guard_stops_network_use(listener):
    """Where the kernel refuses namespaces, the fallback is honest about it: the guard blocks Python's sockets, a
    subprocess gets through, and the result says the network namespace is missing. This also shows that the
    test above would catch a leak."""
    attempts = _connection_attempts(listener.getsockname()[1])
    with Sandbox(LIMITS, namespaces=False) as fallback:
        guarded = fallback.run(attempts["in process"])
        assert guarded.status == "failed" and "network access is not allowed" in guarded.output_tail
        assert _accepted_connections(listener) == 0
        leaked = fallback.run(attempts["in a subprocess"])
        assert _processes_of(set(fallback.uids)) == []
    assert leaked.isolation["network_namespace"] is False
    assert leaked.isolation["notes"] == ["namespaces disabled by configuration"]
    assert leaked.status == "passed" and _accepted_connections(listener) == 1


@pytest.fixture
def readable_sources() -> Iterator[Path]:
    """A world-readable copy of lsp_server for another user to import: the checkout may sit in a private folder."""
    copy = Path(tempfile.mkdtemp(prefix="diffgemma-sources-", dir="/tmp"))
    try:
        shutil.copytree(REPO_ROOT / "lsp_server", copy / "lsp_server", ignore=shutil.ignore_patterns("__pycache__"))
        for path in [copy, *copy.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield copy
    finally:
        shutil.rmtree(copy, ignore_errors=True)


@pytest.mark.skipif(not IS_ROOT, reason="needs root to start a run as an unprivileged user")
def test_an_unprivileged_runner_gets_namespaces_through_a_user_namespace(sandbox, listener, readable_sources):
    """The runner itself as an unprivileged user: no uid to drop to, so a user namespace provides the network,
    PID and mount namespaces; writes, network and stray processes must still be contained."""
    escape = Path("/tmp") / f"diffgemma-bench-escape-{uuid.uuid4().hex}"
    port = listener.getsockname()[1]
    script = textwrap.dedent(f"""
        import json
        from lsp_server.bench.sandbox import Sandbox, SandboxLimits
        programs = [
            "print('ok')",
            "import subprocess\\nsubprocess.run(['sh', '-c', 'echo escaped > {escape}'], check=True)",
            {_connection_attempts(port)["in a subprocess"]!r},
            "import os, time\\nif os.fork() == 0:\\n    os.setsid()\\n    time.sleep(600)",
            "while True:\\n    pass",
        ]
        with Sandbox(SandboxLimits(timeout_s=1.0, memory_mb=256, processes=8)) as sandbox:
            print(json.dumps([(result.status, result.isolation) for result in map(sandbox.run, programs)]))
    """)
    [slot] = _lease_uids(1)
    try:
        completed = subprocess.run([sandbox.python, "-c", script], user=slot.uid, group=slot.uid, extra_groups=[],
                                   env={"PYTHONPATH": str(readable_sources), "PATH": "/usr/bin:/bin"}, cwd="/",
                                   capture_output=True, text=True, timeout=60)
        assert completed.returncode == 0, completed.stderr
        results = json.loads(completed.stdout)
        isolation = results[0][1]
        if not isolation["network_namespace"]:
            pytest.skip(f"the kernel here refuses unprivileged user namespaces: {isolation['notes']}")
        assert isolation["uid"] == slot.uid and isolation["dropped_privileges"] is False
        assert isolation["pid_namespace"] and isolation["readonly_filesystem"]
        assert [status for status, _ in results] == ["passed", "failed", "failed", "passed", "timeout"]
        assert not escape.exists()
        assert _accepted_connections(listener) == 0
        assert _processes_of({slot.uid}) == []
    finally:
        escape.unlink(missing_ok=True)
        os.close(slot.lock_fd)


def test_limits_are_validated():
    with pytest.raises(ValueError, match="timeout_s must be positive"):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ValueError, match="slots must be at least 1"):
        Sandbox(LIMITS, slots=0)


@pytest.mark.skipif(not DEFAULT_DATA_DIR.is_dir(), reason=f"HumanEval-Infilling data not found at {DEFAULT_DATA_DIR}")
def test_example_problem_with_its_ten_known_samples_gives_pass_at_1_of_0_30():
    """The upstream self-check: shell-outs, a 10 s sleep (over the 3 s limit), input() and wrong indentation."""
    [task] = load_humaneval("example", DEFAULT_DATA_DIR)
    lines = (DEFAULT_DATA_DIR / "example_samples.jsonl").read_text().splitlines()
    completions = [json.loads(line)["completion"] for line in lines]
    with Sandbox(SandboxLimits(), slots=2) as default_sandbox:
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda text: default_sandbox.run(task.program(text)), completions))
        assert _processes_of(set(default_sandbox.uids)) == []
    passed = [result.passed for result in results]
    assert passed == [False] * 7 + [True] * 3  # only "return " followed by the suffix "1" passes
    assert [result.status for result in results].count("timeout") == 2
    assert pass_at_k(len(passed), sum(passed), 1) == pytest.approx(0.30)
