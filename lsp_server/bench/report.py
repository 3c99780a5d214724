"""Output of a run: the resumable record journal, summary JSON, markdown table, PNG plots and the progress bar."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TextIO

from lsp_server.bench import BenchError

RUN_FILE = "run.json"  # the configuration: a resumed run must match it
RECORDS_FILE = "records.jsonl"  # one record per finished task, appended as each finishes
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
SERVER_LOG_FILE = "server.log"  # the server back-end's log
LATENCY_PLOT = "latency_cdf.png"
SCORES_PLOT = "scores_by_kind.png"


class Journal:
    """The output directory of one run. Records are appended and flushed one task at a time, so an interrupted run
    restarted with the same --out skips every task already recorded."""

    def __init__(self, out_dir: Path, config: dict) -> None:
        self.out_dir = out_dir
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BenchError(f"cannot create the output directory {out_dir}: {error.strerror}") from None
        self.records_path = out_dir / RECORDS_FILE
        self.records: dict[str, dict] = self._load()
        run_path = out_dir / RUN_FILE
        if self.records:  # without records there is nothing a new configuration could mix with
            if not run_path.exists():
                raise BenchError(f"{out_dir} has records but no {RUN_FILE} saying which configuration made them; "
                                 "choose another --out")
            previous = json.loads(run_path.read_text(encoding="utf-8"))
            differences = [f"{key}: {previous.get(key)!r} there, {config.get(key)!r} now"
                           for key in sorted(set(previous) | set(config)) if previous.get(key) != config.get(key)]
            if differences:
                raise BenchError(f"{out_dir} holds a run with another configuration ({'; '.join(differences)}); "
                                 "resume it with the same options or choose another --out")
        run_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        self._file = open(self.records_path, "a", encoding="utf-8")

    def _load(self) -> dict[str, dict]:
        if not self.records_path.exists():
            return {}
        records: dict[str, dict] = {}
        with open(self.records_path, "rb") as journal:
            lines = journal.read().split(b"\n")
        complete_bytes = 0
        for number, line in enumerate(lines, start=1):
            is_last = number == len(lines)
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if is_last:  # a write cut short by the interruption: drop it, the task runs again
                    break
                raise BenchError(f"{self.records_path}:{number}: not a JSON record; the file is damaged") from None
            if record["task_id"] in records:
                raise BenchError(f"{self.records_path}:{number}: task {record['task_id']} is recorded twice")
            records[record["task_id"]] = record
            complete_bytes += len(line) + 1
        with open(self.records_path, "r+b") as journal:
            journal.truncate(complete_bytes)
        return records

    def append(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self.records[record["task_id"]] = record

    def close(self) -> None:
        self._file.close()


def write_summary(out_dir: Path, summary: dict, config: dict, session: dict) -> Path:
    path = out_dir / SUMMARY_FILE
    path.write_text(json.dumps({**summary, "config": config, "session": session}, indent=2) + "\n",
                    encoding="utf-8")
    return path


def markdown_report(summary: dict, config: dict) -> str:
    def number(value, digits=3):
        return "–" if value is None else f"{value:.{digits}f}"

    def latency(block):
        return "–" if block is None else " / ".join(f"{block[f'p{q}']:.0f}" for q in (50, 90, 99))

    header = ("| task | n | pass@1 | exact match | edit similarity | syntax valid | latency p50 / p90 / p99 (ms) "
              "| tokens / forward |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = [*summary["by_kind"].items(), ("**all**", summary)]
    lines = [f"| {kind} | {block['n']} | {number(block['pass_at_1'])} | {number(block['exact_match'])} "
             f"| {number(block['edit_similarity'])} | {number(block['syntax_valid'])} | {latency(block['latency_ms'])} "
             f"| {number(block['tokens_per_forward'], 2)} |" for kind, block in rows]
    model = f", model `{config['model']}`" if config.get("model") else ""
    notes = [f"Completer `{config['completer']}`{model}, {summary['samples']} samples."]
    if summary["pass_at_k"]:
        notes.append("Unbiased " + ", ".join(f"pass@{k} {value:.3f}" for k, value in summary["pass_at_k"].items())
                     + ".")
    if summary["cold_latency_ms"] is not None:
        notes.append(f"First (cold) request: {summary['cold_latency_ms']:.0f} ms, not in the percentiles.")
    engine = [f"{label} {summary[name]:.1f}" for name, label in (
        ("engine_ms_per_canvas", "ms per canvas"), ("engine_ms_per_step", "ms per step"),
        ("peak_memory_mb", "peak memory (MB)")) if summary[name] is not None]
    if engine:
        notes.append("Engine: " + ", ".join(engine) + ".")
    if summary["baseline"] is not None:
        notes.append(_baseline_note(summary["baseline"]))
    if summary["errors"]:
        notes.append(f"{summary['errors']} requests failed; they count as failed samples.")
    if summary["sandbox"]["programs"]:
        notes.append(_sandbox_note(summary["sandbox"]))
    return "\n".join([header, *lines, "", *notes]) + "\n"


def _baseline_note(baseline: dict) -> str:
    return (f"Baseline transformers `generate()` on the same prompts ({baseline['tasks']} tasks): engine "
            f"{baseline['engine_ms']:.1f} ms, transformers {baseline['transformers_ms']:.1f} ms per generation "
            f"(speed ratio {baseline['speed_ratio']:.2f}); identical tokens on {baseline['token_agreement']:.1%} "
            f"of tasks, {baseline['mean_token_agreement']:.1%} of token positions.")


def _sandbox_note(sandbox: dict) -> str:
    layers = {name for entry in sandbox["isolation"] for name, value in entry.items() if value is True}
    on_all = sorted(name for name in layers if all(entry.get(name) is True for entry in sandbox["isolation"]))
    note = (f"{sandbox['programs']} programs executed, {sandbox['timeouts']} timed out; sandbox layers on every "
            f"program: {', '.join(on_all) or 'none'}")
    if layers - set(on_all):
        note += f" (on some only: {', '.join(sorted(layers - set(on_all)))})"
    return note + "."


def write_plots(out_dir: Path, records: list[dict], summary: dict) -> list[Path]:
    """Latency CDF per task kind and scores per task kind, as PNG (matplotlib, the `bench` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    written = []
    latencies: dict[str, list[float]] = {}
    for record in records:
        for sample in record["samples"]:
            if sample["error"] is None:
                latencies.setdefault(record["kind"], []).append(sample["latency_ms"])
    if latencies:
        figure, axes = pyplot.subplots(figsize=(7, 4.5))
        for kind, values in sorted(latencies.items()):
            ordered = sorted(values)
            axes.step(ordered, [(index + 1) / len(ordered) for index in range(len(ordered))], where="post",
                      marker="o" if len(ordered) < 20 else None, label=f"{kind} (n={len(ordered)})")
        if min(min(values) for values in latencies.values()) > 0:
            axes.set_xscale("log")
        axes.set(xlabel="end-to-end latency (ms)", ylabel="fraction of requests", title="Latency CDF", ylim=(0, 1))
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
        written.append(_save(figure, out_dir / LATENCY_PLOT))
        pyplot.close(figure)

    kinds = list(summary["by_kind"])
    metrics = [(name, label) for name, label in (("pass_at_1", "pass@1"), ("exact_match", "exact match"),
                                                  ("edit_similarity", "edit similarity"))
               if any(summary["by_kind"][kind][name] is not None for kind in kinds)]
    figure, axes = pyplot.subplots(figsize=(max(6, 1.6 * len(kinds) + 2), 4.5))
    width = 0.8 / len(metrics)
    for offset, (name, label) in enumerate(metrics):
        values = [summary["by_kind"][kind][name] or 0.0 for kind in kinds]
        bars = axes.bar([index + offset * width for index in range(len(kinds))], values, width, label=label)
        axes.bar_label(bars, fmt="%.2f", fontsize=8)
    axes.set_xticks([index + width * (len(metrics) - 1) / 2 for index in range(len(kinds))], kinds)
    axes.set(ylim=(0, 1.25), ylabel="score", title="Scores per task type")
    axes.legend(loc="upper center", ncol=len(metrics))
    written.append(_save(figure, out_dir / SCORES_PLOT))
    pyplot.close(figure)
    return written


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


class Progress:
    """Progress bar with rate and ETA on a terminal; a line every 5 % (at most every 30 s otherwise) in a log."""

    def __init__(self, total: int, *, already_done: int = 0, stream: TextIO = sys.stderr,
                 enabled: bool = True) -> None:
        self.total, self.done, self.stream, self.enabled = total, already_done, stream, enabled
        self.session_done = 0
        self.started = self.last_drawn = time.monotonic()
        self.interactive = stream.isatty()
        self.last_logged_fraction = 0.0

    def advance(self) -> None:
        self.done += 1
        self.session_done += 1
        if not self.enabled:
            return
        now = time.monotonic()
        fraction = self.done / self.total if self.total else 1.0
        finished = self.done == self.total
        if self.interactive:
            if finished or now - self.last_drawn >= 0.2:
                self.stream.write("\r" + self.line(now))
                self.stream.flush()
                self.last_drawn = now
        elif finished or fraction - self.last_logged_fraction >= 0.05 or now - self.last_drawn >= 30:
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()
            self.last_drawn, self.last_logged_fraction = now, fraction

    def line(self, now: float) -> str:
        fraction = self.done / self.total if self.total else 1.0
        filled = int(fraction * 30)
        elapsed = now - self.started
        rate = self.session_done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else None
        return (f"[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {fraction:6.1%} "
                f"{rate:5.2f} tasks/s ETA {_duration(eta)}")

    def close(self) -> None:
        if self.enabled and self.interactive:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
