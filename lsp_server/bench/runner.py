"""The benchmark loop: one back-end fills holes in sequence while sandbox workers execute the programs in parallel."""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from lsp_server.bench import BenchError
from lsp_server.bench.baseline import TransformersBaseline
from lsp_server.bench.completers import Completer, Completion, CompletionError
from lsp_server.bench.metrics import edit_similarity, exact_match, syntax_valid
from lsp_server.bench.report import Journal, Progress
from lsp_server.bench.sandbox import ExecutionResult, Sandbox
from lsp_server.bench.tasks import InfillTask

TASKS_IN_FLIGHT_PER_WORKER = 4  # generated tasks waiting for execution, per worker, before generation pauses
MEASUREMENTS = tuple(field.name for field in dataclasses.fields(Completion) if field.name != "text")


@dataclass
class _TaskInFlight:
    task: InfillTask
    samples: list[dict]
    executions: list[Future | None]
    baseline: dict | None  # the baseline comparison on this task's prompt, if one was asked for

    def executions_done(self) -> bool:
        return all(execution is None or execution.done() for execution in self.executions)

    def finished_cleanly(self) -> bool:
        return all(execution is None or (execution.done() and not execution.cancelled()
                                         and execution.exception() is None) for execution in self.executions)


def run_benchmark(tasks: list[InfillTask], completer: Completer, journal: Journal, progress: Progress, *,
                  sandbox: Sandbox | None, samples_per_task: int = 1,
                  baseline: TransformersBaseline | None = None) -> None:
    """Complete and score every task not yet in the journal, appending one record per task in task order.

    The first completion of the session is marked cold (it may pay for compilation and cache warm-up). With a
    baseline, each task's record also holds its comparison (see lsp_server.bench.baseline)."""
    if samples_per_task < 1:
        raise BenchError(f"samples per task must be at least 1, got {samples_per_task}")
    pending = [task for task in tasks if task.task_id not in journal.records]
    if sandbox is None and any(task.executable for task in pending):
        raise ValueError("executable tasks need a sandbox")
    workers = sandbox.slots if sandbox is not None else 1
    in_flight: deque[_TaskInFlight] = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox")
    try:
        for index, task in enumerate(pending):
            samples = [_complete(completer, task, cold=index == 0 and number == 0)
                       for number in range(samples_per_task)]
            executions = [pool.submit(sandbox.run, task.program(sample["completion"]))
                          if task.executable and sample["error"] is None else None for sample in samples]
            comparison = baseline.compare(task) if baseline is not None else None
            in_flight.append(_TaskInFlight(task, samples, executions, comparison))
            while in_flight and (in_flight[0].executions_done()
                                 or len(in_flight) > workers * TASKS_IN_FLIGHT_PER_WORKER):
                _record(in_flight.popleft(), journal, progress)
        while in_flight:
            _record(in_flight.popleft(), journal, progress)
    except BaseException:
        # Programs already running finish (within their timeout); what finished is kept for a resumed run.
        pool.shutdown(wait=True, cancel_futures=True)
        for entry in in_flight:
            if entry.finished_cleanly():
                _record(entry, journal, progress)
        raise
    finally:
        pool.shutdown(wait=True)


def _complete(completer: Completer, task: InfillTask, *, cold: bool) -> dict:
    """One sample: the completion, its measurements and its text metrics (execution is added later)."""
    try:
        completion = completer.complete(task)
    except CompletionError as error:
        return {"completion": "", "error": str(error) or type(error).__name__, "cold": cold,
                **dict.fromkeys(MEASUREMENTS), "exact_match": False, "edit_similarity": 0.0,
                "syntax_valid": False, "execution": None}
    if not (isinstance(completion, Completion) and isinstance(completion.text, str)
            and math.isfinite(completion.latency_ms) and completion.latency_ms >= 0):
        raise BenchError(f"the {completer.name} back-end returned an invalid completion for {task.task_id}: "
                         f"{completion!r}")
    text = completion.text
    return {"completion": text, "error": None, "cold": cold,
            **{name: getattr(completion, name) for name in MEASUREMENTS},
            "exact_match": exact_match(text, task.reference),
            "edit_similarity": edit_similarity(text, task.reference),
            "syntax_valid": syntax_valid(task.language, task.prefix + text + task.suffix), "execution": None}


def _record(entry: _TaskInFlight, journal: Journal, progress: Progress) -> None:
    for sample, execution in zip(entry.samples, entry.executions):
        if execution is not None:
            sample["execution"] = _execution_record(execution.result())
    task = entry.task
    journal.append({
        "task_id": task.task_id, "kind": task.kind, "language": task.language, "path": task.path,
        "executable": task.executable, "num_samples": len(entry.samples),
        "num_passed": sum(bool(sample["execution"] and sample["execution"]["status"] == "passed")
                          for sample in entry.samples) if task.executable else None,
        "samples": entry.samples, "baseline": entry.baseline})
    progress.advance()


def _execution_record(result: ExecutionResult) -> dict:
    """What a record keeps of an execution: the output only where it explains a failure."""
    record = dataclasses.asdict(result)
    if result.passed:
        del record["output_tail"]
    return record
