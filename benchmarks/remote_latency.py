"""Benchmark: what the network path costs. Inline completion through diffgemma-serve over loopback vs in-process.

    python benchmarks/remote_latency.py [--model embedded|PATH] [--runs 30] [--canvas] [--clients 4]

Starts ``diffgemma-serve`` on a free loopback port and two language servers as an editor would: one runs the model
in-process, the other points ``model`` at ``http://127.0.0.1:PORT/v1`` (with the checkpoint's tokenizer, so
prompts go as token ids). Both get the same 2,000-line Python file, the same fixed seed and the same fresh cursor
positions (never asked before: no result cache, no typed-ahead), one request at a time, alternating which server
goes first. Prints p50 / p90 of each, their paired difference (the added latency; issue 13's target is <= 15 ms
p50), and how many completions were identical.

Canvas notifications are off by default (Neovim's setting): the remote backend then uses /v1/completions, as it
would with vLLM; ``--canvas`` turns them on, and the remote backend streams every denoising step from /v1/canvas.

Then ``--clients`` concurrent HTTP clients each send ``--requests`` /v1/completions requests (distinct prompts
from the file) to diffgemma-serve, against one client sending the same number alone: completions per second and
latency p50 under load. One model worker serves them in FIFO order, so throughput stays that of one worker and
latency grows with the queue; the figure says what a shared box gives each user.

Run it with nothing else on the machine (pause a training run: kill -STOP / kill -CONT).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from engine import resolve_model_path  # noqa: E402
from fixtures.support import large_python_source  # noqa: E402  (the tests' realistic module generator)
from http_support import start_serve, stop_process  # noqa: E402
from lsp_server.stats import percentile  # noqa: E402
from lsp_support import inline, open_document, start_client, stop_client  # noqa: E402

URI = "file:///bench/module.py"
LINES = 2000
SEED = 0
TARGET_ADDED_MS = 15.0


async def ready_client(model: str, settings: dict):
    client = await start_client(model, settings=settings, wait_for=None)
    while not client.statuses or client.statuses[-1]["state"] == "loading":
        await asyncio.sleep(0.05)
    if client.statuses[-1]["state"] == "error":
        raise SystemExit(f"{model}: {client.statuses[-1]['message']}")
    client.description = client.statuses[-1]["message"]
    return client


async def timed(client, line: int, character: int) -> tuple[float, str | None]:
    started = time.perf_counter()
    result = await inline(client, URI, line, character)
    return (time.perf_counter() - started) * 1000.0, result.items[0].insert_text if result.items else None


async def latency(args: argparse.Namespace, url: str, text: str, positions: list[tuple[int, int]]) -> None:
    settings = {"seed": SEED, "canvasNotifications": args.canvas}
    local = await ready_client(args.model, settings)
    remote = await ready_client(url + "/v1", {**settings, "tokenizer": str(resolve_model_path(args.model))})
    for client in (local, remote):
        open_document(client, URI, text)
        await timed(client, *positions[0])  # warm-up: first-run costs are not latency
    samples: dict[str, list[float]] = {"in-process": [], "remote": []}
    same = 0
    for index, position in enumerate(positions[1:]):
        order = [("in-process", local), ("remote", remote)]
        answers = {}
        for name, client in order if index % 2 == 0 else order[::-1]:
            elapsed, answers[name] = await timed(client, *position)
            samples[name].append(elapsed)
        same += answers["in-process"] == answers["remote"]
    model, served = local.description, remote.description
    await stop_client(local)
    await stop_client(remote)

    added = sorted(r - i for i, r in zip(samples["in-process"], samples["remote"]))
    print(f"inline completion, in-process vs through diffgemma-serve over loopback ({len(added)} fresh cursor "
          f"positions in a {LINES}-line file, seed {SEED}, canvas notifications {'on' if args.canvas else 'off'})")
    print(f"in-process: {model}\nremote: {served}\n")
    print("| path       |   n | p50 ms | p90 ms | mean ms |")
    print("|------------|----:|-------:|-------:|--------:|")
    for name, values in samples.items():
        ordered = sorted(values)
        print(f"| {name:<10} | {len(ordered):>3} | {percentile(ordered, 50):>6.1f} | {percentile(ordered, 90):>6.1f} "
              f"| {statistics.fmean(ordered):>7.1f} |")
    print(f"\nadded latency (remote - in-process, paired): p50 {percentile(added, 50):.1f} ms, "
          f"p90 {percentile(added, 90):.1f} ms (target p50 <= {TARGET_ADDED_MS:g} ms)")
    print(f"identical completions: {same} of {len(added)}")


async def throughput(args: argparse.Namespace, url: str, prompts: list[str]) -> None:
    async def one_client(client: httpx.AsyncClient, share: list[str]) -> list[float]:
        times = []
        for prompt in share:
            started = time.perf_counter()
            response = await client.post(url + "/v1/completions", json={"prompt": prompt, "seed": SEED})
            response.raise_for_status()
            times.append((time.perf_counter() - started) * 1000.0)
        return times

    print(f"\n/v1/completions throughput, {args.requests} requests per client (distinct prompts):\n")
    print("| clients | completions/s | p50 ms | p90 ms |")
    print("|--------:|--------------:|-------:|-------:|")
    async with httpx.AsyncClient(timeout=300) as client:
        await one_client(client, prompts[:2])  # warm-up
        for clients in (1, args.clients):
            shares = [prompts[i * args.requests:(i + 1) * args.requests] for i in range(clients)]
            started = time.perf_counter()
            results = await asyncio.gather(*(one_client(client, share) for share in shares))
            wall = time.perf_counter() - started
            times = sorted(t for result in results for t in result)
            print(f"| {clients:>7} | {len(times) / wall:>13.2f} | {percentile(times, 50):>6.1f} "
                  f"| {percentile(times, 90):>6.1f} |")


async def measure(args: argparse.Namespace) -> None:
    text = large_python_source(LINES)
    lines = text.split("\n")[:LINES]
    text = "\n".join(lines)
    code_lines = [i for i, line in enumerate(lines) if line.strip() and not line.rstrip().endswith(":")]
    chosen = random.Random(SEED).sample(code_lines, args.runs + 1 + args.clients * args.requests + 2)
    positions = [(line, len(lines[line])) for line in chosen[:args.runs + 1]]
    prompts = ["\n".join(lines[max(0, line - 40):line + 1]) for line in chosen[args.runs + 1:]]
    process, url = start_serve(args.model)
    try:
        print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}\n")
        await latency(args, url, text, positions)
        await throughput(args, url, prompts)
    finally:
        stop_process(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", default="embedded", help="checkpoint directory, or embedded (the default)")
    parser.add_argument("--runs", type=int, default=30, help="cursor positions asked of each server")
    parser.add_argument("--canvas", action="store_true", help="canvas notifications on (remote: /v1/canvas)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients for the throughput test")
    parser.add_argument("--requests", type=int, default=8, help="requests per client in the throughput test")
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
