"""Weight memory of google/diffusiongemma-26B-A4B-it per precision, from the released shapes (nothing allocated).

    python benchmarks/quantized_memory.py

bf16 throughout, then the experts (gate_up_proj and down_proj of every layer) int4-g32, int4-g64 or fp8 with their
scales, everything else bf16: engine/quantized.py's `memory_table` over the model built on the meta device.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.gpu_step import released_config  # noqa: E402
from engine.quantized import memory_table  # noqa: E402


def main() -> int:
    print("| precision | weights (GB) | weights (GiB) |")
    print("|---|---|---|")
    for precision, nbytes in memory_table(released_config("released", 256)).items():
        print(f"| {precision} | {nbytes / 1e9:.2f} | {nbytes / 2**30:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
