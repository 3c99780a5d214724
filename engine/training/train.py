"""Train a DiffusionGemma-architecture model for fill-in-the-middle (the objective is in `objective.py`).

A campaign runs in pieces: every `--checkpoint-minutes` (and on SIGINT/SIGTERM) the run saves its whole state, i.e.
weights, AdamW moments, the data stream's random state, the loss's generator and the step that drives the schedule,
and `--resume` continues bit for bit where it stopped. Without that state (a lost `runs/` directory), `--init-from`
starts from exported weights, e.g. the committed embedded model, with a fresh optimizer. `--device cuda` trains on
a GPU with the same random streams (every draw is made on the CPU).

    python -m engine.training.train --corpus runs/corpus --tokenizer engine/embedded_model/tokenizer.json \
        --out runs/train --minutes 120 --resume
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import torch

import engine
from engine.config import GenerationConfig
from engine.loader import save_checkpoint
from engine.model import DiffusionGemma
from engine.training import evaluate
from engine.training.corpus import load_documents
from engine.training.fim import HOLE_MIXES, FimBatchStream
from engine.training.objective import NOISE_SCHEDULES, TrainSettings, initialise, model_config, training_loss
from engine.training.tokenizer import EOS_ID, PAD_ID, load_tokenizer

STATE_FILE = "training_state.pt"
LOG_FILE = "log.jsonl"


def learning_rate(step: int, settings: TrainSettings) -> float:
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = min(1.0, (step - settings.warmup_steps) / max(1, settings.total_steps - settings.warmup_steps))
    return settings.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def export(model: DiffusionGemma, directory: Path, tokenizer_path: Path, generation: GenerationConfig,
           dtype: torch.dtype, canvas_length: int | None = None) -> None:
    """A checkpoint the engine loads unchanged: config, generation config, safetensors weights, tokenizer.
    `canvas_length` is the canvas it is served with, which may be shorter than the one it was trained on."""
    config = model.config if canvas_length is None else replace(model.config, canvas_length=canvas_length)
    exported = DiffusionGemma(config)
    exported.load_state_dict(model.state_dict())
    save_checkpoint(exported.to(dtype), directory, generation)
    shutil.copyfile(tokenizer_path, directory / "tokenizer.json")


def default_generation_config(canvas_length: int, denoising_steps: int = 8) -> GenerationConfig:
    """The shipped sampler for short in-line holes: one canvas, far fewer steps than the released 48 since the canvas
    is short (the model card's table says what fewer steps cost)."""
    return GenerationConfig(max_new_tokens=canvas_length, max_denoising_steps=denoising_steps, entropy_bound=0.1,
                            t_min=0.4, t_max=0.8, eos_token_id=(EOS_ID,), pad_token_id=PAD_ID)


class Run:
    """One training run's mutable state, saved and restored as a whole."""

    def __init__(self, settings: TrainSettings, vocab_size: int, stream: FimBatchStream, device: str = "cpu"):
        self.settings = settings
        self.device = torch.device(device)
        torch.manual_seed(settings.seed)
        self.model = DiffusionGemma(model_config(settings, vocab_size))
        initialise(self.model, settings.seed)  # on the CPU: the same initial weights on any device
        self.model.to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=settings.learning_rate, betas=(0.9, 0.95),
                                           weight_decay=settings.weight_decay)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.data_rng = stream.seeded_rng()
        self.stream = stream
        self.step = 0
        self.tokens_seen = 0

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.data_rng.setstate(state["data_rng"])
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "data_rng": self.data_rng.getstate(),
                "settings": asdict(self.settings), "step": self.step, "tokens_seen": self.tokens_seen}

    def train_step(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, self.settings)
        batch = type(batch)(*(tensor.to(self.device) for tensor in batch))
        loss, diffusion_loss, ar_loss = training_loss(self.model, batch, self.settings, self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.step += 1
        self.tokens_seen += int(batch.prompt_mask.sum()) + batch.canvas_ids.numel()
        return loss, diffusion_loss, ar_loss


# Settings a resumed run may change from its next step on: `total_steps` extends the cosine schedule (the learning
# rate changes from then on), `noise_schedule` changes which noise levels the next batches train on. Neither changes
# the model's shape, the data order or the optimizer's state.
CHANGEABLE_ON_RESUME = ("total_steps", "noise_schedule")


def settings_from(args: argparse.Namespace, saved: dict | None) -> TrainSettings:
    """A resumed run keeps its saved settings, but for those in CHANGEABLE_ON_RESUME given on the command line."""
    given = {k: v for k, v in vars(args).items() if k in TrainSettings.__dataclass_fields__ and v is not None}
    if saved is None:
        return TrainSettings(**given)
    settings = TrainSettings(**{**asdict(TrainSettings()), **saved})
    changed = sorted(k for k, v in given.items() if k not in CHANGEABLE_ON_RESUME and getattr(settings, k) != v)
    if changed:
        raise SystemExit(f"--resume keeps the run's settings; these differ from it: {', '.join(changed)}")
    for name in CHANGEABLE_ON_RESUME:
        if name in given:
            setattr(settings, name, given[name])
    return settings


def train(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_FILE
    tokenizer = load_tokenizer(args.tokenizer)
    # On the CPU first: a state saved on one device resumes on another (loading copies it onto the model's).
    resuming = args.resume and state_path.exists()
    saved = torch.load(state_path, weights_only=False, map_location="cpu") if resuming else None
    settings = settings_from(args, saved["settings"] if saved else None)
    documents = load_documents(Path(args.corpus), "train")
    if settings.hole_mix not in HOLE_MIXES:
        raise SystemExit(f"--hole-mix must be one of {', '.join(HOLE_MIXES)}, got {settings.hole_mix!r}")
    if settings.noise_schedule not in NOISE_SCHEDULES:
        raise SystemExit(f"--noise-schedule must be one of {', '.join(NOISE_SCHEDULES)}, "
                         f"got {settings.noise_schedule!r}")
    stream = FimBatchStream(documents, tokenizer, settings.batch_size, settings.max_prompt_tokens,
                            settings.canvas_length, seed=settings.seed, kind_weights=HOLE_MIXES[settings.hole_mix])
    run = Run(settings, tokenizer.get_vocab_size(), stream, args.device)
    if saved:
        run.restore(saved)
    elif args.init_from:
        # Weights only: the optimizer, data stream and schedule start afresh (step 0, warm-up included).
        run.model.load_state_dict(engine.load(args.init_from, device="cpu", dtype=torch.float32).model.state_dict())
    parameters = sum(p.numel() for p in run.model.parameters())
    print(f"model: {parameters / 1e6:.2f}M parameters; starting at step {run.step}, {run.tokens_seen} tokens",
          flush=True)

    heldout = HeldOut(Path(args.corpus), args.eval_holes, settings) if args.eval_every else None
    with stop_on_signal() as stop_requested:
        run_until_stopped(run, stream, out, args, heldout, stop_requested)
    print(f"stopped at step {run.step}, {run.tokens_seen} tokens; checkpoint in {out / 'checkpoint'}", flush=True)


@contextmanager
def stop_on_signal():
    """SIGINT / SIGTERM end the run after the current step, with a checkpoint, instead of losing up to
    `--checkpoint-minutes` of work."""
    requested: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = {signum: signal.signal(signum, lambda *_: requested.append(True))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_until_stopped(run: "Run", stream: FimBatchStream, out: Path, args, heldout: "HeldOut | None",
                      stop_requested: list) -> None:
    settings = run.settings
    batches = stream.batches(run.data_rng)
    run.model.train()
    log = (out / LOG_FILE).open("a")
    started = window_start = last_save = time.perf_counter()
    window_tokens, saves = 0, 0
    deadline = started + args.minutes * 60 if args.minutes else math.inf
    last_step = min(settings.total_steps, run.step + args.steps if args.steps is not None else math.inf)
    while run.step < last_step and time.perf_counter() < deadline and not stop_requested:
        before = run.tokens_seen
        loss, diffusion_loss, ar_loss = run.train_step(next(batches))
        window_tokens += run.tokens_seen - before
        if run.step % args.log_every == 0:
            now = time.perf_counter()
            write_log(log, {"step": run.step, "tokens": run.tokens_seen, "time": round(time.time(), 1),
                            "loss": round(loss.item(), 4),
                            "diffusion_loss": round(diffusion_loss.item(), 4), "ar_loss": round(ar_loss.item(), 4),
                            "lr": run.optimizer.param_groups[0]["lr"],
                            "tokens_per_s": round(window_tokens / (now - window_start), 1)})
            window_start, window_tokens = now, 0
        due = (args.save_every and run.step % args.save_every == 0) or \
            (args.checkpoint_minutes and time.perf_counter() - last_save >= args.checkpoint_minutes * 60)
        if due:
            saves += 1
            checkpoint(run, out, args, heldout if heldout and saves % args.eval_every == 0 else None, log)
            last_save = window_start = time.perf_counter()
            window_tokens = 0
    checkpoint(run, out, args, heldout, log)
    log.close()


class HeldOut:
    """Fixed held-out holes and loss batches, scored on each evaluated checkpoint (the learning curve)."""

    def __init__(self, corpus: Path, holes: int, settings: TrainSettings):
        self.corpus = corpus
        self.max_prompt_tokens = settings.max_prompt_tokens
        self.holes = evaluate.held_out_holes(corpus, holes, settings.canvas_length)

    def score(self, checkpoint_dir: Path) -> dict:
        score = evaluate.score_checkpoint(checkpoint_dir, self.holes, self.corpus, loss_batches=8,
                                          max_prompt_tokens=self.max_prompt_tokens)
        return {"exact_match": score.exact_match, "edit_similarity": score.edit_similarity,
                "exact_match_by_kind": score.exact_match_by_kind, "loss": score.loss, "seconds": score.seconds}


def write_log(log, record: dict) -> None:
    print(json.dumps(record), flush=True)
    log.write(json.dumps(record) + "\n")
    log.flush()


def checkpoint(run: Run, out: Path, args, heldout: HeldOut | None, log) -> None:
    """Resumable state, the latest exported checkpoint, a snapshot of it for the learning curve, and optionally
    its held-out scores in the log."""
    save_state(out / STATE_FILE, run.state())
    dtype = torch.bfloat16 if args.export_dtype == "bfloat16" else torch.float32
    export(run.model, out / "checkpoint", Path(args.tokenizer),
           default_generation_config(args.serve_canvas, args.serve_steps), dtype, args.serve_canvas)
    snapshot = out / "snapshots" / f"step-{run.step:06d}"
    shutil.rmtree(snapshot, ignore_errors=True)
    shutil.copytree(out / "checkpoint", snapshot)
    (snapshot / "tokens_seen").write_text(f"{run.tokens_seen}\n")
    if heldout is not None:
        write_log(log, {"step": run.step, "tokens": run.tokens_seen, "heldout": heldout.score(snapshot)})


def save_state(path: Path, state: dict) -> None:
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    temporary.replace(path)  # atomic: an interrupted save never corrupts the resumable state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--resume", action="store_true", help="continue exactly from OUT/training_state.pt")
    parser.add_argument("--device", default="cpu", help="where the model trains: cpu, cuda or cuda:N")
    parser.add_argument("--init-from", help="a checkpoint directory whose weights start a run that has no state")
    parser.add_argument("--minutes", type=float, default=None, help="stop (and save) after this wall time")
    parser.add_argument("--steps", type=int, default=None, help="stop (and save) after this many steps")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--save-every", type=int, default=0, help="also save every N steps (0: by time only)")
    parser.add_argument("--checkpoint-minutes", type=float, default=10.0)
    parser.add_argument("--eval-every", type=int, default=3,
                        help="score every Nth checkpoint on held-out holes and batches (0: never)")
    parser.add_argument("--eval-holes", type=int, default=100)
    parser.add_argument("--serve-canvas", type=int, default=16, help="canvas length of the exported checkpoint")
    parser.add_argument("--serve-steps", type=int, default=8, help="denoising steps of the exported checkpoint")
    parser.add_argument("--export-dtype", choices=["bfloat16", "float32"], default="bfloat16")
    for name, field in TrainSettings.__dataclass_fields__.items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(field.default), default=None)
    train(parser.parse_args(argv))


if __name__ == "__main__":
    main()
