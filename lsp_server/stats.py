"""Counters the server reports through the ``diffgemma/stats`` request."""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any

# Latencies kept for the mean and percentiles: recent behaviour, in bounded memory.
LATENCY_WINDOW = 1000


@dataclass
class LastRun:
    """What the engine did in the most recent model run."""

    prompt_tokens: int
    encoded_prompt_tokens: int  # fewer than prompt_tokens when the KV cache of a shared prefix was reused
    steps: int
    blocks: int
    wall_ms: float
    tokens_per_forward: float  # of the first candidate


@dataclass
class Stats:
    requests: int = 0  # inline and completion requests received
    model_runs: int = 0  # engine runs started
    cache_hits: int = 0  # answered from the result cache
    typed_ahead_hits: int = 0  # answered with the rest of a suggestion the user is typing
    cancellations: int = 0  # ended without an answer: cancelled by the client or superseded
    superseded: int = 0  # of the cancellations, those a newer request for the same document replaced
    stale: int = 0  # results discarded because the document changed while the model ran
    errors: int = 0  # engine failures answered with an empty result
    acceptances: int = 0  # suggestions the client reported accepted
    last_run: LastRun | None = None
    # From request to answer, of the requests answered with a suggestion (empty answers take no time to speak of).
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def to_wire(self, status: str, compilation: dict[str, Any] | None = None) -> dict[str, Any]:
        """The counters in wire form; `compilation` is the local engine's `compile_status()` (None: remote)."""
        latencies = sorted(self.latencies_ms)
        return {
            "status": status,
            "compilation": compilation,
            "requests": self.requests,
            "modelRuns": self.model_runs,
            "cacheHits": self.cache_hits,
            "typedAheadHits": self.typed_ahead_hits,
            "cancellations": self.cancellations,
            "superseded": self.superseded,
            "stale": self.stale,
            "errors": self.errors,
            "acceptances": self.acceptances,
            "latencyMs": {
                "count": len(latencies),
                "mean": statistics.fmean(latencies) if latencies else None,
                "p50": percentile(latencies, 50),
                "p90": percentile(latencies, 90),
            },
            "lastRun": None if self.last_run is None else {
                "promptTokens": self.last_run.prompt_tokens,
                "encodedPromptTokens": self.last_run.encoded_prompt_tokens,
                "steps": self.last_run.steps,
                "blocks": self.last_run.blocks,
                "wallMs": self.last_run.wall_ms,
                "tokensPerForward": self.last_run.tokens_per_forward,
            },
        }


def percentile(ordered: list[float], percent: float) -> float | None:
    """Nearest-rank percentile of an ascending list; None when it is empty."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]
