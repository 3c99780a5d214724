"""Benchmark: the server's resident memory over many completions at varied cursors (memory must stay flat).

    python benchmarks/memory_growth.py [--model embedded|PATH] [--completions 2000] [--warmup 200] [--settings JSON]

Starts ``python -m lsp_server`` as an editor would, opens a 2,000-line Python file, and asks for inline completions
at random cursors (random line, random column: a different prompt each time, as when a user moves around and
types). Every `--every` completions it prints the server's RSS (``/proc/PID/status``); at the end the growth from
the end of the warm-up to the last sample, which issue 16 wants below 10 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fixtures.support import large_python_source  # noqa: E402
from lsp_support import inline, open_document, start_client, stats, stop_client  # noqa: E402

URI = "file:///bench/module.py"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def measure(args: argparse.Namespace) -> None:
    text = large_python_source(2000)
    lines = text.split("\n")
    client = await start_client(args.model, settings=args.settings, wait_for="ready")
    pid = client._server.pid
    open_document(client, URI, text)
    rng = random.Random(args.seed)
    started = time.monotonic()
    samples: list[tuple[int, float]] = [(0, rss_mb(pid))]
    print(f"server pid {pid}: {samples[0][1]:.0f} MB after loading the model")
    total = args.warmup + args.completions
    for done in range(1, total + 1):
        line = rng.randrange(len(lines))
        await inline(client, URI, line, rng.randint(0, len(lines[line])), invoked=True)
        if done % args.every == 0 or done == total:
            samples.append((done, rss_mb(pid)))
            print(f"{done:5d} completions  RSS {samples[-1][1]:7.1f} MB  ({time.monotonic() - started:.0f} s)",
                  flush=True)
    counters = await stats(client)
    await stop_client(client)
    after_warmup = next(mb for done, mb in samples if done >= args.warmup)
    final = samples[-1][1]
    print(f"\nmodel runs {counters['modelRuns']}, requests {counters['requests']}")
    print(f"RSS after {args.warmup} warm-up completions {after_warmup:.1f} MB, after {total} {final:.1f} MB: "
          f"growth {100 * (final - after_warmup) / after_warmup:+.1f} % over {args.completions} completions "
          f"(target < 10 %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the embedded model)")
    parser.add_argument("--completions", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", type=json.loads, default=None, help="initializationOptions as JSON")
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
