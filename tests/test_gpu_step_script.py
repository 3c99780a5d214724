"""benchmarks/gpu_step.py runs end to end on the CPU at a tiny config and prints its table: exact and serving rows,
dense and with int4-g32 experts, the weights line, the summary, and the time budget's skips."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--config", "tiny", "--device", "cpu", "--steps", "2", "--warmup", "1", "--canvas", "16",
         "--prompt-tokens", "64"]


def run_script(*extra: str) -> str:
    command = [sys.executable, "benchmarks/gpu_step.py", *SMALL, *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def row(out: str, mode: str, precision: str, canvas: int) -> list[str]:
    """The cells after (mode, precision, canvas) of that row; exactly one such row."""
    rows = re.findall(rf"^\| {mode} \| {precision} \| {canvas} \| (.*) \|$", out, flags=re.MULTILINE)
    assert len(rows) == 1, out
    return [cell.strip() for cell in rows[0].split(" | ")]


def test_gpu_step_script_times_exact_and_serving_rows_with_quantised_experts_on_the_cpu():
    out = run_script("--quantization", "int4-g32")
    assert "| mode | precision | canvas | ms/step (median) |" in out
    timed = {(mode, precision): row(out, mode, precision, 16)
             for mode, precision in [("exact eager", "fp32"), ("serving eager", "fp32"),
                                     ("serving eager", "int4-g32")]}
    for cells in timed.values():
        assert len(cells) == 8, cells  # ms, min-max, canvas tok/s, committed tok/s, peak, roofline, ratio, compile
        ms = float(cells[0])
        low, high = map(float, cells[1].split("-"))
        assert 0 < low <= ms <= high
        # canvas tok/s = 16 / step, rounded to a token; the printed ms is rounded to 0.005 ms
        assert abs(float(cells[2]) - 16e3 / ms) <= 0.5 + 16e3 * 0.005 / (ms * (ms - 0.005)) + 1e-9
        assert cells[4] == cells[5] == "n/a on cpu" and cells[6] == "n/a"  # peak memory and roofline
    # Compiling is off by default on the CPU, and says how to turn it on.
    assert row(out, "exact compiled", "fp32", 16)[0] == "not run (off on cpu; pass --compile)"
    for precision in ("fp32", "int4-g32"):
        assert row(out, "serving compiled", precision, 16)[0] == "not run (off on cpu; pass --serving-compile)"
    assert not re.search(r"^\| exact \w+ \| int4-g32 \|", out, flags=re.MULTILINE)  # quantised: serving rows only

    weights = re.search(r"^weights by precision \(engine\.quantized\.weight_bytes\): fp32 ([0-9.]+) MB, "
                        r"int4-g32 ([0-9.]+) MB, int4-g64 n/a \(.*\), fp8 ([0-9.]+) MB$", out, flags=re.MULTILINE)
    assert weights, out
    fp32, int4, fp8 = map(float, weights.groups())
    assert int4 < fp8 < fp32
    # The quantised model really holds packed experts: it allocates what weight_bytes says, less than fp32.
    allocated = re.search(r"^int4-g32 model: experts int4-g32 \(rest float32\), ([0-9.]+) MB allocated", out,
                          flags=re.MULTILINE)
    assert allocated and float(allocated.group(1)) == int4, out

    summary = re.search(r"^summary: best serving row per canvas: C=16: serving eager (\S+) ([0-9.]+) ms/step, "
                        r"roofline n/a on cpu$", out, flags=re.MULTILINE)
    assert summary, out
    serving = {p: float(timed[("serving eager", p)][0]) for p in ("fp32", "int4-g32")}
    assert serving[summary.group(1)] == float(summary.group(2)) == min(serving.values())
    assert "command: python benchmarks/gpu_step.py --config tiny --device cpu" in out
    assert re.search(r"^elapsed: [0-9.]+ s$", out, flags=re.MULTILINE), out


def test_gpu_step_script_skips_compiles_that_the_time_limit_cannot_fit():
    # Under 30 s left no compile starts: the eager rows are still timed and every compiled row says why it is empty.
    out = run_script("--serving-compile", "--compile", "--time-limit", "25")
    assert float(row(out, "serving eager", "fp32", 16)[0]) > 0
    assert row(out, "serving compiled", "fp32", 16)[0] == "skipped (time limit)"
    assert row(out, "exact compiled", "fp32", 16)[0] == "skipped (time limit)"
