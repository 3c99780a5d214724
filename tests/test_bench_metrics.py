"""Metric math against independent computations (brute force, numpy, textbook dynamic programming)."""

from __future__ import annotations

import itertools
import math
import random

import numpy
import pytest

from lsp_server.bench.metrics import (edit_similarity, exact_match, levenshtein, pass_at_k, percentile,
                                      summarize, syntax_valid)


def _pass_at_k_by_enumeration(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of the n samples that contain at least one passing sample."""
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(outcomes[index] for index in subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("n, c, k", [(1, 0, 1), (1, 1, 1), (10, 3, 1), (10, 3, 2), (10, 3, 5), (10, 3, 8),
                                     (7, 0, 3), (7, 7, 3), (12, 1, 4)])
def test_pass_at_k_matches_enumeration_of_subsets(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(_pass_at_k_by_enumeration(n, c, k))


def test_pass_at_k_closed_form_and_large_n():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(200, 13, 100) == pytest.approx(1 - math.comb(187, 100) / math.comb(200, 100))


@pytest.mark.parametrize("n, c, k", [(10, 11, 1), (10, -1, 1), (10, 3, 0), (10, 3, 11)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="pass@k needs"):
        pass_at_k(n, c, k)


def test_percentile_matches_numpy_linear_interpolation():
    rng = random.Random(7)
    for size in (1, 2, 5, 101):
        values = [rng.uniform(0, 1000) for _ in range(size)]
        for q in (0, 50, 90, 99, 100):
            assert percentile(values, q) == pytest.approx(numpy.percentile(values, q))
    with pytest.raises(ValueError):
        percentile([], 50)


def _levenshtein_by_table(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def test_levenshtein_known_pairs():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == levenshtein("abc", "") == 3
    assert levenshtein("same", "same") == 0
    assert levenshtein("flaw", "lawn") == 2


def test_levenshtein_matches_dynamic_programming_on_random_strings():
    rng = random.Random(1)
    for _ in range(300):
        a = "".join(rng.choice("ab c\n") for _ in range(rng.randrange(0, 90)))
        b = "".join(rng.choice("abc d") for _ in range(rng.randrange(0, 90)))
        assert levenshtein(a, b) == _levenshtein_by_table(a, b), (a, b)


def test_levenshtein_beyond_one_machine_word():
    a = "x = compute(alpha, beta)\n" * 20
    b = a.replace("beta", "gamma", 3)
    assert levenshtein(a, b) == _levenshtein_by_table(a, b) == 12


def test_exact_match_and_edit_similarity_ignore_surrounding_whitespace_only():
    assert exact_match("    return x\n", "return x")
    assert not exact_match("return  x", "return x")
    assert edit_similarity("  return x\n", "return x") == 1.0
    assert edit_similarity("return y", "return x") == pytest.approx(1 - 1 / 8)
    assert edit_similarity("", "") == 1.0
    assert edit_similarity("", "abc") == 0.0


def test_syntax_valid_per_language():
    assert syntax_valid("python", "def f(x):\n    return x + 1\n")
    assert not syntax_valid("python", "def f(x):\n    return (x + \n")
    assert syntax_valid("go", "package main\n\nfunc main() {}\n")
    assert not syntax_valid("go", "package main\n\nfunc main() {\n")


def _sample(*, passed=None, latency=10.0, cold=False, error=None, exact=True, similarity=1.0, valid=True,
            tokens_per_forward=None, peak=None, isolation=None):
    execution = None if passed is None else {
        "status": "passed" if passed else "timeout", "exit_code": 0 if passed else None, "duration_ms": 5.0,
        "isolation": isolation or {"uid": 1, "network_namespace": True, "notes": []},
        "leftover_processes_killed": 0}
    return {"completion": "x", "error": error, "cold": cold, "latency_ms": latency, "engine_ms_per_canvas": None,
            "engine_ms_per_step": None, "tokens_per_forward": tokens_per_forward, "peak_memory_mb": peak,
            "exact_match": exact, "edit_similarity": similarity, "syntax_valid": valid, "execution": execution}


def _record(task_id, kind, samples, executable=True):
    passed = sum(bool(s["execution"] and s["execution"]["status"] == "passed") for s in samples)
    return {"task_id": task_id, "kind": kind, "language": "python", "path": "x.py", "executable": executable,
            "num_samples": len(samples), "num_passed": passed if executable else None, "samples": samples}


def test_summary_of_hand_made_records():
    first = [_sample(passed=index < 3, latency=100.0 + index, cold=index == 0, tokens_per_forward=2.0,
                     peak=100.0 + index, isolation={"uid": 10 + index % 2, "network_namespace": True, "notes": []})
             for index in range(10)]
    second = [_sample(passed=True, latency=200.0, tokens_per_forward=4.0) for _ in range(10)]
    repo = [_sample(exact=False, similarity=0.5, valid=False, latency=50.0)]
    errored = [_sample(passed=False, error="server dropped the request", exact=False, similarity=0.0, valid=False)]
    errored[0]["execution"] = None
    summary = summarize([_record("a", "single-line", first), _record("b", "single-line", second),
                         _record("r", "repo-line", repo, executable=False), _record("e", "multi-line", errored)])

    assert summary["n"] == 4 and summary["samples"] == 22
    assert summary["pass_at_1"] == pytest.approx((0.3 + 1.0 + 0.0) / 3)
    assert summary["pass_at_k"] == {}  # the errored task has one sample, so no k > 1 is estimable for all
    assert summary["by_kind"]["single-line"]["pass_at_k"] == {"10": pytest.approx(1.0)}
    assert summary["by_kind"]["repo-line"]["pass_at_1"] is None
    assert summary["exact_match"] == pytest.approx(20 / 22)
    assert summary["edit_similarity"] == pytest.approx(20.5 / 22)
    assert summary["syntax_valid"] == pytest.approx(20 / 22)
    assert summary["errors"] == 1
    warm = [100.0 + index for index in range(1, 10)] + [200.0] * 10 + [50.0]
    assert summary["latency_ms"] == {f"p{q}": pytest.approx(numpy.percentile(warm, q)) for q in (50, 90, 99)}
    assert summary["cold_latency_ms"] == 100.0
    assert summary["tokens_per_forward"] == pytest.approx(3.0)
    assert summary["peak_memory_mb"] == 109.0
    assert summary["engine_ms_per_canvas"] is None
    assert summary["sandbox"]["programs"] == 20 and summary["sandbox"]["timeouts"] == 7
    # Slots differ only by uid: one isolation level.
    assert summary["sandbox"]["isolation"] == [{"programs": 20, "network_namespace": True, "notes": []}]
