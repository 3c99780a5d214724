"""Metric math: pass@k, text similarity, syntax validity, percentiles, and the summary of a run's records."""

from __future__ import annotations

import math
from collections import Counter
from statistics import fmean

from engine.training.text_metrics import edit_similarity, exact_match, levenshtein
from lsp_server.bench.tasks import parser_for

__all__ = ["edit_similarity", "exact_match", "levenshtein", "pass_at_k", "percentile", "syntax_valid", "summarize"]

PASS_AT_K = (1, 10, 100)
LATENCY_PERCENTILES = (50, 90, 99)
ENGINE_MEANS = ("engine_ms_per_canvas", "engine_ms_per_step", "tokens_per_forward")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimator of pass@k from n samples of which c passed: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021),
    as a product so that large n does not overflow."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def syntax_valid(language: str, text: str) -> bool:
    """Whether the whole document, hole filled, parses without error nodes."""
    return not parser_for(language).parse(text.encode("utf-8")).root_node.has_error


def summarize(records: list[dict]) -> dict:
    """Aggregates over all records, then per task kind, and what the sandbox achieved."""
    kinds = sorted({record["kind"] for record in records})
    executions = [sample["execution"] for record in records for sample in record["samples"] if sample["execution"]]
    isolation_counts = Counter(_isolation_key(execution["isolation"]) for execution in executions)
    return {
        **_aggregate(records),
        "by_kind": {kind: _aggregate([record for record in records if record["kind"] == kind]) for kind in kinds},
        "sandbox": {
            "programs": len(executions),
            "timeouts": sum(execution["status"] == "timeout" for execution in executions),
            "leftover_processes_killed": sum(execution["leftover_processes_killed"] for execution in executions),
            "isolation": [{"programs": count, **{name: list(value) if isinstance(value, tuple) else value
                                                 for name, value in key}}
                          for key, count in isolation_counts.most_common()],
        },
    }


def _isolation_key(isolation: dict) -> tuple:
    """Hashable form of an isolation report, without the uid (which differs per parallel slot)."""
    return tuple(sorted((name, tuple(value) if isinstance(value, list) else value)
                        for name, value in isolation.items() if name != "uid"))


def _aggregate(records: list[dict]) -> dict:
    samples = [sample for record in records for sample in record["samples"]]
    executable = [record for record in records if record["executable"]]
    fewest_samples = min((record["num_samples"] for record in executable), default=0)
    warm = [sample["latency_ms"] for sample in samples if not sample["cold"] and sample["error"] is None]
    cold = [sample["latency_ms"] for sample in samples if sample["cold"] and sample["error"] is None]
    summary = {
        "n": len(records),
        "samples": len(samples),
        "pass_at_1": _mean_pass_at(executable, 1),
        "pass_at_k": {str(k): _mean_pass_at(executable, k) for k in PASS_AT_K if 1 < k <= fewest_samples},
        "exact_match": _mean(sample["exact_match"] for sample in samples),
        "edit_similarity": _mean(sample["edit_similarity"] for sample in samples),
        "syntax_valid": _mean(sample["syntax_valid"] for sample in samples),
        "errors": sum(sample["error"] is not None for sample in samples),
        "latency_ms": {f"p{q}": percentile(warm, q) for q in LATENCY_PERCENTILES} if warm else None,
        "cold_latency_ms": fmean(cold) if cold else None,
    }
    for name in ENGINE_MEANS:
        summary[name] = _mean(sample[name] for sample in samples if sample[name] is not None)
    peaks = [sample["peak_memory_mb"] for sample in samples if sample["peak_memory_mb"] is not None]
    summary["peak_memory_mb"] = max(peaks) if peaks else None
    summary["baseline"] = _baseline_summary([record["baseline"] for record in records if record.get("baseline")])
    return summary


def _baseline_summary(comparisons: list[dict]) -> dict | None:
    """Mean wall times of both implementations, the ratio of the means (> 1: the engine is faster), the
    fraction of tasks whose tokens are identical and the mean fraction of identical token positions."""
    if not comparisons:
        return None
    engine_ms = fmean(comparison["engine_ms"] for comparison in comparisons)
    transformers_ms = fmean(comparison["transformers_ms"] for comparison in comparisons)
    return {"tasks": len(comparisons), "engine_ms": engine_ms, "transformers_ms": transformers_ms,
            "speed_ratio": transformers_ms / engine_ms,
            "token_agreement": fmean(comparison["identical_tokens"] for comparison in comparisons),
            "mean_token_agreement": fmean(comparison["token_agreement"] for comparison in comparisons)}


def _mean_pass_at(records: list[dict], k: int) -> float | None:
    if not records:
        return None
    return fmean(pass_at_k(record["num_samples"], record["num_passed"], k) for record in records)


def _mean(values) -> float | None:
    values = list(values)
    return fmean(values) if values else None
