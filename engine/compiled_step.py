"""Serving mode's denoising step compiled ahead of time in a child process (CPU): torch.export + AOTInductor.

    python -m engine.compiled_step REQUEST PACKAGE PARENT_PID     (started by `DenoisingStep`, never by hand)

Why another process: torch.compile changes process-wide state while it traces. torch.fx patches
`nn.Module.__call__` for every thread, so an eager request on another thread failed inside its own layers ("module
is not installed as a submodule"), and requests waited up to 20 s for the GIL during a 40-60 s first compile
(`benchmarks/server_latency.py --during-compile`). The child compiles at a lower CPU priority and writes one
package file; the serving process only loads it, which traces nothing.

Why AOTInductor rather than torch.compile: the loaded package runs without dynamo's guards and Python wrapper (on
this project's 2-core CPU, 6.4 ms a step against 7.5 ms, timed in turns by `benchmarks/serving_step.py`).

A package is the step of one model (its weights are constants inside it), for one set of input shapes, sampler
constants and OpenMP thread count (the kernels are built for a thread count), on one torch and engine source:
all of that is in its file name, so a restart loads it and another model never does.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.utils._pytree as pytree
from torch import nn

ENGINE_DIR = Path(__file__).resolve().parent
CHILD_PRIORITY = 10  # os.nice increment: the compile takes what the serving process leaves
TENSOR = object()  # a leaf that is an input of the package
KEPT_PACKAGES = 8  # the compile cache keeps the packages used last (each holds a copy of its model's weights)
PACKAGED_WEIGHTS_LIMIT = 1 << 30  # bytes: a larger model's step compiles in the serving process (engine.serving)


def weight_bytes(model: nn.Module) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in [*model.parameters(), *model.buffers()])


def tensor_leaves(inputs: tuple) -> list[torch.Tensor]:
    """The step's inputs (store, state, draws...) as the package takes them: their tensors, in pytree order."""
    return [leaf for leaf in pytree.tree_leaves(inputs) if isinstance(leaf, torch.Tensor)]


def flatten(inputs: tuple) -> tuple[list[torch.Tensor], Any, list[Any]]:
    """`tensor_leaves(inputs)`, the tree's spec and its leaves with the tensors marked (the others, sliding windows
    and sampler constants, are fixed in the package)."""
    leaves, spec = pytree.tree_flatten(inputs)
    return tensor_leaves(inputs), spec, [TENSOR if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]


class ExportedStep(nn.Module):
    """`step(store, state, *draws)` over flat tensors, returning flat tensors: the form torch.export takes."""

    def __init__(self, model: nn.Module, step: Callable, spec: Any, fixed: list[Any]):
        super().__init__()
        self.model = model
        self.step, self.spec, self.fixed = step, spec, fixed

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        given = iter(tensors)
        leaves = [next(given) if value is TENSOR else value for value in self.fixed]
        store, state, *draws = pytree.tree_unflatten(leaves, self.spec)
        next_state, accepted = self.step(self.model, store, state, *draws)
        return (*next_state, accepted)


def weights_digest(model: nn.Module) -> str:
    """A digest of the model's parameters and buffers (names, shapes, dtypes, bytes): one per model, not per shape."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        digest.update(name.encode())
        digest.update(repr((tuple(tensor.shape), tensor.dtype)).encode())
        digest.update(tensor.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def package_path(directory: Path, model: nn.Module, weights: str, shape_key: tuple, threads: int) -> Path:
    """Where the package for this model (`weights`: its `weights_digest`), input shapes and thread count lives in
    the compile cache `directory`."""
    digest = hashlib.blake2b(weights.encode(), digest_size=16)
    for source in sorted([*ENGINE_DIR.glob("*.py"), *ENGINE_DIR.glob("kernels/*.py")]):
        digest.update(source.read_bytes())
    digest.update(repr((getattr(model, "config", None), shape_key, threads, torch.__version__,
                        torch.backends.cpu.get_cpu_capability())).encode())
    return directory / "aot-steps" / f"step-{digest.hexdigest()}.pt2"


def compile_in_child(model: nn.Module, step: Callable, inputs: tuple, threads: int, package: Path,
                     started: Callable[[subprocess.Popen], None]) -> None:
    """Compile `step(model, *inputs)` into `package` in a child process and wait for it (`started` is handed the
    child as it starts). Raises if the child fails; its request file is removed whatever happens."""
    package.parent.mkdir(parents=True, exist_ok=True)
    handle, request = tempfile.mkstemp(dir=package.parent, prefix="request-", suffix=".pt")
    os.close(handle)
    try:
        torch.save({"model": model, "step": step, "inputs": inputs, "threads": threads}, request)
        environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ENGINE_DIR.parent), os.environ.get("PYTHONPATH")]))}
        child = subprocess.Popen(
            [sys.executable, "-m", "engine.compiled_step", request, str(package), str(os.getpid())],
            env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        started(child)
        _RUNNING_CHILDREN.add(child)
        try:
            _, errors = child.communicate()
        finally:
            _RUNNING_CHILDREN.discard(child)
        if child.returncode != 0:
            raise RuntimeError(f"the compiling process exited with {child.returncode}:\n{errors[-4000:]}")
    finally:
        Path(request).unlink(missing_ok=True)


# Children compiling, stopped at a normal exit (each would finish a package nobody waits for). A server that leaves
# by os._exit skips this; the children's own watchdog stops them then (`exit_with_parent`).
_RUNNING_CHILDREN: set[subprocess.Popen] = set()


@atexit.register
def _stop_running_children() -> None:
    for child in list(_RUNNING_CHILDREN):
        child.terminate()
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()


def load(package: Path) -> Callable[[tuple], list[torch.Tensor]]:
    """The package as a function of the step's inputs (store, state, *draws), returning its outputs flat."""
    runner = torch._inductor.aoti_load_package(str(package))
    _remove_unpacked_copies()
    try:
        os.utime(package)  # used now: the last to go when the cache is pruned
    except OSError:  # a read-only cache still serves
        pass
    return lambda inputs: runner(*tensor_leaves(inputs))


def _remove_unpacked_copies() -> None:
    """Delete the folders the loader unpacked this process's packages into (under the temp directory; the loaded
    libraries stay mapped). The loader would delete them when it is destroyed, which a server's exit never waits
    for: each start would leave a copy of the weights behind."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return
    temp = Path(tempfile.gettempdir()).resolve()
    for line in maps.read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and "aotinductor_" in fields[5]:
            for folder in Path(fields[5].strip()).parents:
                if folder.parent == temp and folder.name.startswith("aotinductor_"):
                    shutil.rmtree(folder, ignore_errors=True)


def prune(directory: Path, keep: int = KEPT_PACKAGES, leftovers_after_s: float = 24 * 3600) -> None:
    """Delete all but the `keep` packages used last (an upgrade or another model leaves old ones behind), and
    requests, partial packages and locks older than `leftovers_after_s` (a child that was killed)."""
    packages, now = [], time.time()
    for path in [*directory.glob("step-*.pt2"), *directory.glob("step-*.lock"), *directory.glob("request-*.pt")]:
        try:
            modified = path.stat().st_mtime
        except FileNotFoundError:  # pruned by another process meanwhile
            continue
        if path.suffix != ".pt2" or ".partial." in path.name:  # another child's, maybe in the making
            if now - modified > leftovers_after_s:
                path.unlink(missing_ok=True)
            continue
        packages.append((modified, path))
    for _, stale in sorted(packages, reverse=True)[keep:]:
        stale.unlink(missing_ok=True)


def partial_path(package: Path) -> Path:
    """Where this process writes `package` before moving it into place."""
    return package.with_suffix(f".{os.getpid()}.partial.pt2")


def lock_path(package: Path) -> Path:
    return package.with_suffix(".lock")


def compile_package(request: Path, package: Path) -> None:
    """The child's work: export the requested step and write its AOTInductor package atomically. One child at a
    time per package (two servers starting on one model): the second finds it written."""
    with open(lock_path(package), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not package.exists():
            asked = torch.load(request, weights_only=False)
            torch.set_num_threads(asked["threads"])
            tensors, spec, fixed = flatten(asked["inputs"])
            module = ExportedStep(asked["model"], asked["step"], spec, fixed).eval()
            with torch.no_grad():
                exported = torch.export.export(module, tuple(tensors), strict=False)
            partial = partial_path(package)
            torch._inductor.aoti_compile_and_package(exported, package_path=str(partial))
            os.replace(partial, package)
    lock_path(package).unlink(missing_ok=True)
    prune(package.parent)


def exit_with_parent(parent: int, leftovers: list[Path]) -> None:
    """The child ends when the serving process does, however that ended (a package nobody waits for would take a
    core for a minute), or when it is told to (SIGTERM), and removes its `leftovers` first."""
    def leave(*_) -> None:
        for path in leftovers:
            path.unlink(missing_ok=True)
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        leave()

    signal.signal(signal.SIGTERM, leave)
    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str]) -> int:
    request, package, parent = Path(argv[0]), Path(argv[1]), int(argv[2])
    # (the parent may be gone already: its pid is the one it gave)
    exit_with_parent(parent, [request, partial_path(package), lock_path(package)])
    os.nice(CHILD_PRIORITY)
    try:
        compile_package(request, package)
    finally:
        request.unlink(missing_ok=True)
        partial_path(package).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
