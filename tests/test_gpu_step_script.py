"""benchmarks/gpu_step.py runs end to end on the CPU at a tiny config and prints its table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_step_script_runs_on_the_cpu_at_a_tiny_config():
    command = [sys.executable, "benchmarks/gpu_step.py", "--config", "tiny", "--device", "cpu", "--steps", "2",
               "--canvas", "16", "--prompt-tokens", "64", "--no-compile"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    row = re.search(r"^\| eager \| 16 \| ([0-9.]+) \|.*$", out, flags=re.MULTILINE)
    assert row, out
    assert float(row.group(1)) > 0  # ms per step
    assert "n/a on cpu" in row.group(0)  # peak memory and roofline columns
    assert re.search(r"^\| compile \| 16 \| not run", out, flags=re.MULTILINE), out
    assert "| mode | canvas | ms/step (median) |" in out
    assert "command: python benchmarks/gpu_step.py --config tiny --device cpu" in out
    assert re.search(r"^elapsed: [0-9.]+ s$", out, flags=re.MULTILINE), out
