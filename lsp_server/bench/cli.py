"""`diffgemma-bench`: score a completion back-end on infilling tasks, headless.

    diffgemma-bench --task single-line --limit 100 --out runs/sl    # through the language server
    diffgemma-bench --direct --model CHECKPOINT --task multi-line   # the engine in-process
    diffgemma-bench --repo ~/src/project --limit 200                # holes drawn from any source tree
    diffgemma-bench --completer oracle --task example               # check of the harness itself: pass@1 = 1.0
    diffgemma-bench --completer empty --task single-line            # the empty-completion floor to beat
    diffgemma-bench --direct --model CHECKPOINT --baseline transformers   # speed and agreement vs the reference

Writes OUT/records.jsonl (one record per task, appended as tasks finish: rerun with the same --out to resume),
OUT/summary.json, OUT/report.md and PNG plots (and OUT/server.log with the server back-end); prints the markdown
table.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from lsp_server.bench import BenchError
from lsp_server.bench.baseline import BASELINES, make_baseline
from lsp_server.bench.completers import BACKENDS, MODEL_FREE_BACKENDS, CompleterSettings, make_completer
from lsp_server.bench.metrics import summarize
from lsp_server.bench.report import (REPORT_FILE, SERVER_LOG_FILE, Journal, Progress, markdown_report, write_plots,
                                     write_summary)
from lsp_server.bench.runner import run_benchmark
from lsp_server.bench.sandbox import Sandbox, SandboxLimits
from lsp_server.bench.tasks import (DATA_ENV_VAR, HUMANEVAL_FILES, InfillTask, draw_repo_holes, load_humaneval,
                                    resolve_data_dir, sample_tasks)
from lsp_server.settings import DTYPE_CHOICES, DTYPE_HELP, ENGINE_MODE_HELP, ENGINE_MODES, NO_COMPILE_HELP

DEFAULT_TASK = "single-line"
DEFAULT_REPO_HOLES = 100


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffgemma-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("tasks")
    source.add_argument("--task", action="append", choices=list(HUMANEVAL_FILES),
                        help=f"HumanEval-Infilling task, repeatable (default: {DEFAULT_TASK})")
    source.add_argument("--data", metavar="DIR", help="HumanEval-Infilling data directory (default: "
                        f"${DATA_ENV_VAR}, else ../shared/benchmarks/human-eval-infilling beside the repository)")
    source.add_argument("--repo", metavar="DIR", help="draw holes (whole lines, blocks, spans) from this source "
                        "tree instead; scored by exact match and edit similarity")
    source.add_argument("--limit", type=int, metavar="N", help="a seeded random subset of N tasks per task type; "
                        f"with --repo the number of holes (default {DEFAULT_REPO_HOLES})")
    source.add_argument("--seed", type=int, default=0, help="for task subsets, hole drawing and sampling (default 0)")
    source.add_argument("--samples", type=int, default=1, metavar="N",
                        help="completions per task; n > 1 also reports unbiased pass@k for k <= n (default 1)")

    backend = parser.add_argument_group("completion back-end")
    choice = backend.add_mutually_exclusive_group()
    choice.add_argument("--completer", choices=BACKENDS, default="server",
                        help="server: diffgemma-lsp --stdio as a headless LSP client (default); direct: the engine "
                             "in-process; oracle: the reference text, to check the harness (not a model); empty: nothing, the "
                             "floor a model must beat")
    choice.add_argument("--direct", dest="completer", action="store_const", const="direct",
                        help="same as --completer direct")
    backend.add_argument("--model", help="checkpoint directory or name for the back-end")
    backend.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help=DTYPE_HELP)
    backend.add_argument("--engine-mode", choices=ENGINE_MODES, default="serving", help=ENGINE_MODE_HELP)
    backend.add_argument("--no-compile", action="store_true", help=NO_COMPILE_HELP)
    backend.add_argument("--baseline", choices=BASELINES,
                         help="also generate each task's prompt with the engine and with transformers' reference "
                              "generate() on the same checkpoint: speed ratio and token agreement (needs "
                              "transformers; loads the model twice more in this process)")

    execution = parser.add_argument_group("execution sandbox")
    execution.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                           help="programs executed in parallel (default: min(4, CPU count))")
    execution.add_argument("--timeout", type=float, default=SandboxLimits.timeout_s, metavar="SECONDS",
                           help=f"wall-clock limit per program (default {SandboxLimits.timeout_s})")
    execution.add_argument("--memory-mb", type=int, default=SandboxLimits.memory_mb,
                           help=f"address-space limit per program (default {SandboxLimits.memory_mb})")
    execution.add_argument("--sandbox-python", metavar="PATH", help="interpreter for the programs (default: this "
                           "one, else python3 on PATH, whichever the unprivileged sandbox user can run)")

    output = parser.add_argument_group("output")
    output.add_argument("--out", metavar="DIR", help="output directory; an existing one is resumed "
                        "(default: runs/bench-<date>-<time>)")
    output.add_argument("--no-plots", action="store_true", help="skip the PNG plots (which need matplotlib)")
    output.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except BenchError as error:
        print(f"diffgemma-bench: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndiffgemma-bench: interrupted; run again with the same --out to resume", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    for name in ("limit", "samples", "workers", "timeout", "memory_mb"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise BenchError(f"--{name.replace('_', '-')} must be positive, got {value}")
    # Flag combinations first: these errors must not wait for (or depend on) the task data.
    if args.model is not None and args.completer in MODEL_FREE_BACKENDS:
        raise BenchError(f"--model has no effect with the {args.completer} completer, which runs no model")
    if args.baseline and args.completer in MODEL_FREE_BACKENDS:
        raise BenchError("--baseline compares model generations: use it with --direct or --completer server")
    if not args.no_plots and importlib.util.find_spec("matplotlib") is None:
        raise BenchError("the PNG plots need matplotlib (pip install 'diffgemma-lsp[bench]'); or pass --no-plots")
    tasks, config = _tasks_and_config(args)
    out_dir = Path(args.out) if args.out else Path("runs") / time.strftime("bench-%Y%m%d-%H%M%S")
    journal = Journal(out_dir, config)
    strangers = set(journal.records) - {task.task_id for task in tasks}
    if strangers:
        journal.close()
        raise BenchError(f"{out_dir} has records of {len(strangers)} tasks that are not in this run (e.g. "
                         f"{min(strangers)}): the tasks changed since it was written; choose another --out")
    pending = [task for task in tasks if task.task_id not in journal.records]
    print(f"diffgemma-bench: {len(tasks)} tasks, {len(tasks) - len(pending)} already in {out_dir}",
          file=sys.stderr)

    session = {"startup_ms": None, "sandbox_python": None, "tasks_run": len(pending)}
    started = time.monotonic()
    progress = Progress(len(tasks), already_done=len(tasks) - len(pending), enabled=not args.no_progress)
    try:
        if pending:
            with ExitStack() as running:
                # The sandbox first: it fails fast, the back-end may take long to start.
                sandbox = None
                if any(task.executable for task in pending):
                    sandbox = running.enter_context(Sandbox(
                        SandboxLimits(timeout_s=args.timeout, memory_mb=args.memory_mb), slots=args.workers,
                        python=args.sandbox_python))
                    session["sandbox_python"] = sandbox.python
                settings = CompleterSettings(backend=args.completer, model=args.model, seed=args.seed,
                                             dtype=args.dtype, engine_mode=args.engine_mode,
                                             compile=not args.no_compile, server_log=out_dir / SERVER_LOG_FILE)
                baseline = None
                if args.baseline:  # before the back-end: a missing transformers is found without waiting for it
                    baseline = make_baseline(args.baseline, settings)
                    running.callback(baseline.close)
                backend_started = time.monotonic()
                completer = make_completer(settings)
                running.callback(completer.close)
                session["startup_ms"] = (time.monotonic() - backend_started) * 1000.0
                run_benchmark(tasks, completer, journal, progress, sandbox=sandbox, samples_per_task=args.samples,
                              baseline=baseline)
    finally:
        progress.close()
        journal.close()
    session["wall_s"] = time.monotonic() - started

    records = [journal.records[task.task_id] for task in tasks]
    summary = summarize(records)
    written = [write_summary(out_dir, summary, config, session)]
    report = markdown_report(summary, config)
    (out_dir / REPORT_FILE).write_text(report, encoding="utf-8")
    written.append(out_dir / REPORT_FILE)
    if not args.no_plots:
        written += write_plots(out_dir, records, summary)
    print(report)
    print("diffgemma-bench: wrote " + ", ".join(str(path) for path in written), file=sys.stderr)
    return 0


def _tasks_and_config(args: argparse.Namespace) -> tuple[list[InfillTask], dict]:
    """The run's tasks, and the options that decide its results (a resumed run must repeat them)."""
    config = {"completer": args.completer, "model": args.model, "seed": args.seed, "limit": args.limit,
              "samples_per_task": args.samples, "timeout_s": args.timeout, "memory_mb": args.memory_mb,
              "baseline": args.baseline}
    if args.repo is not None:
        if args.task or args.data:
            raise BenchError("--repo draws its own holes: it cannot be combined with --task or --data")
        root = Path(args.repo).resolve()
        tasks = draw_repo_holes(root, args.limit or DEFAULT_REPO_HOLES, args.seed)
        if not tasks:
            raise BenchError(f"no holes could be drawn from {root}: no parsable source files of a known language")
        return tasks, {**config, "repo": str(root)}
    kinds = list(dict.fromkeys(args.task or [DEFAULT_TASK]))
    data_dir = resolve_data_dir(args.data)
    tasks = [task for kind in kinds for task in sample_tasks(load_humaneval(kind, data_dir), args.limit, args.seed)]
    return tasks, {**config, "tasks": kinds, "data": str(data_dir.resolve())}
