"""Completion back-ends: the `Completer` protocol the runner drives, and `make_completer`, the one place they are built.

Back-ends: "server" (the default: starts `diffgemma-lsp --stdio` and acts as a headless LSP client), "direct"
(calls the engine in-process) and "oracle" (returns each task's reference: a check of the harness itself, which
must then score pass@1 = 1.0 and exact match 1.0; it measures nothing about any model).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from lsp_server.bench import BenchError
from lsp_server.bench.tasks import InfillTask

BACKENDS = ("server", "direct", "oracle")


@dataclass(frozen=True)
class Completion:
    text: str  # what fills the hole
    latency_ms: float  # end to end, request to usable text, as the user of this back-end waits for it
    # Engine-side measurements; None where the back-end has no engine or does not report them.
    engine_ms_per_canvas: float | None = None
    engine_ms_per_step: float | None = None
    tokens_per_forward: float | None = None
    peak_memory_mb: float | None = None


class CompletionError(Exception):
    """One request failed but the back-end can take the next (it is scored as a failed sample, with the message).
    Any other exception from `complete` stops the run; finished tasks stay in the output for a resumed run."""


class Completer(Protocol):
    name: str

    def complete(self, task: InfillTask) -> Completion:
        """Fill `task`'s hole given task.prefix and task.suffix (the document is prefix + suffix, opened as
        task.path in task.language, the cursor at len(prefix))."""

    def close(self) -> None:
        """Release the back-end (stop the server, free the model)."""


@dataclass(frozen=True)
class CompleterSettings:
    backend: str  # one of BACKENDS
    model: str | None  # checkpoint directory or name (--model); None: the back-end's default
    seed: int  # for back-ends that sample


def make_completer(settings: CompleterSettings) -> Completer:
    """Build and start the back-end; the runner measures how long this takes as the start-up cost."""
    if settings.backend == "oracle":
        if settings.model is not None:
            raise BenchError("--model has no effect with the oracle completer, which returns the reference text")
        return OracleCompleter()
    if settings.backend in ("server", "direct"):
        raise BenchError(f"the {settings.backend!r} back-end is not wired into diffgemma-bench yet; "
                         "only --completer oracle runs for now")
    raise BenchError(f"unknown completer {settings.backend!r}; choose from {', '.join(BACKENDS)}")


class OracleCompleter:
    """Returns the reference: checks tasks, sandbox and scoring end to end (pass@1 must be 1.0). Not a model."""

    name = "oracle"

    def complete(self, task: InfillTask) -> Completion:
        started = time.perf_counter()
        text = task.reference
        return Completion(text=text, latency_ms=(time.perf_counter() - started) * 1000.0)

    def close(self) -> None:
        pass
