"""engine.training.serving_check: serving-mode (bf16) logits within tolerance of exact mode; paired quality figures."""

import math

import pytest

from checkpoints import cached_checkpoint
from engine.training.serving_check import PARTS, hole_prompts, logit_differences, paired_quality, quantization_quality
from engine.training.fim import Hole

# Handmade holes (short, so the prompts and the test stay small).
HOLES = [
    Hole("line", "def add(a, b):\n", "    return a + b\n", "\n\nprint(add(1, 2))\n"),
    Hole("line_end", "for item in items:\n    total += ", "item\n", "print(total)\n"),
    Hole("expression", "width = 4\narea = ", "width * width", "\nprint(area)\n"),
    Hole("span", "import os\n\npath = os.path.", "join(root, name", ")\nprint(path)\n"),
]

# Tolerances of bf16 serving logits against float32 exact logits on the tiny random checkpoint, for these holes'
# prompts (109 encoder positions) and their noise canvases (64 decoder positions), measured on an AVX512-BF16 CPU
# over canvas seeds 0-9, worst case over the seeds and the three parts (encoder, decoder step 1, decoder with SC):
#   max |Δ log-prob|  0.035   -> bound 0.1  (about 3x)
#   mean |Δ logit|    0.0028  -> bound 0.01 (about 3.5x)
#   argmax agreement  0.936   -> bound 0.85 (2.3x the disagreements)
#   max TV distance   0.004   -> bound 0.02 (5x)
# The random model's logits are nearly flat (std 0.16, median top-2 margin 0.03), so bf16's rounding (8 mantissa
# bits) flips some near-tied argmaxes: agreement is the loosest check, |Δ log-prob| the informative one.
MAX_LOG_PROB_DIFFERENCE = 0.1
MAX_MEAN_LOGIT_DIFFERENCE = 0.01
MIN_ARGMAX_AGREEMENT = 0.85
MAX_TOTAL_VARIATION = 0.02


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    return cached_checkpoint(tmp_path_factory.getbasetemp(), kind="random")


@pytest.fixture(scope="module")
def prompts(random_checkpoint):
    return hole_prompts(random_checkpoint, HOLES)


def test_bf16_logits_are_within_tolerance_of_float32(random_checkpoint, prompts):
    result = logit_differences(random_checkpoint, prompts, serving_dtype="bfloat16", seed=0)
    assert (result["exact_dtype"], result["serving_dtype"]) == ("float32", "bfloat16")
    assert result["prompts"] == len(HOLES) and result["prompt_tokens"] == sum(map(len, prompts))
    assert set(result["parts"]) == set(PARTS)
    for part, figures in result["parts"].items():
        expected_positions = result["prompt_tokens"] if part == "encoder" else 16 * len(HOLES)
        assert figures["positions"] == expected_positions, part
        # A real reduced-precision run: the logits moved, but not far.
        assert 0 < figures["max_abs_logit"], part
        assert figures["max_abs_log_prob"] < MAX_LOG_PROB_DIFFERENCE, (part, figures)
        assert figures["mean_abs_logit"] < MAX_MEAN_LOGIT_DIFFERENCE, (part, figures)
        assert figures["argmax_agreement"] >= MIN_ARGMAX_AGREEMENT, (part, figures)
        assert 0 <= figures["max_total_variation"] < MAX_TOTAL_VARIATION, (part, figures)


def test_exact_against_exact_differs_by_nothing(random_checkpoint, prompts):
    # Two float32 loads on the same inputs give the same bits: the function compares like with like.
    result = logit_differences(random_checkpoint, prompts, serving_dtype="float32", serving_mode="exact", seed=0)
    for part, figures in result["parts"].items():
        assert figures["max_abs_logit"] == 0.0, part
        assert figures["mean_abs_logit"] == 0.0, part
        assert figures["max_abs_log_prob"] == 0.0, part
        assert figures["max_total_variation"] == 0.0, part
        assert figures["argmax_agreement"] == 1.0, part


def test_serving_mode_in_float32_differs_by_float_rounding(random_checkpoint, prompts):
    # The shared-prefix store's attention sums in another order than SDPA over a copied cache: rounding only.
    result = logit_differences(random_checkpoint, prompts, serving_dtype="float32", seed=0)
    for part, figures in result["parts"].items():
        assert 0.0 <= figures["max_abs_logit"] < 1e-4, part
        assert figures["argmax_agreement"] == 1.0, part


def test_logit_differences_checks_its_inputs(random_checkpoint, prompts):
    with pytest.raises(ValueError, match="one canvas per prompt"):
        logit_differences(random_checkpoint, prompts, [[0] * 16])


def test_paired_quality_returns_sane_figures(random_checkpoint):
    result = paired_quality(random_checkpoint, HOLES, seed=5, serving_dtype="bfloat16")
    assert result["holes"] == len(HOLES) and len(result["per_hole"]) == len(HOLES)
    assert (result["exact"]["dtype"], result["exact"]["sampling"]) == ("float32", "reference")
    assert (result["serving"]["dtype"], result["serving"]["sampling"]) == ("bfloat16", "fast")
    for mode in ("exact", "serving"):
        assert 0.0 <= result[mode]["edit_similarity"] <= 1.0
        assert 0.0 <= result[mode]["exact_match"] <= 1.0
        per_hole = [row[mode]["edit_similarity"] for row in result["per_hole"]]
        assert math.isclose(result[mode]["edit_similarity"], sum(per_hole) / len(per_hole))
    differences = [row["serving"]["edit_similarity"] - row["exact"]["edit_similarity"] for row in result["per_hole"]]
    assert math.isclose(result["edit_similarity_difference"], sum(differences) / len(differences))
    assert result["edit_similarity_standard_error"] >= 0.0
    assert result["within_noise"] == (abs(result["edit_similarity_difference"])
                                      <= 2 * result["edit_similarity_standard_error"])
    assert [row["kind"] for row in result["per_hole"]] == [hole.kind for hole in HOLES]


def test_paired_quality_of_a_model_whose_answer_is_known(tmp_path_factory):
    # The constant checkpoint writes "x" at every canvas position whatever the seed or the numerics: both modes give
    # the same middle, so a hole whose middle is that text is an exact match in both, with zero paired difference.
    constant = cached_checkpoint(tmp_path_factory.getbasetemp(), kind="constant")
    holes = [Hole("span", "a = ", "x" * 16, "\n"), Hole("span", "b = ", "y", "\n")]
    result = paired_quality(constant, holes, seed=0, serving_dtype="bfloat16")
    assert result["same_middles"] == 1.0
    assert [row["exact"]["exact_match"] for row in result["per_hole"]] == [True, False]
    assert result["exact"]["exact_match"] == result["serving"]["exact_match"] == 0.5
    assert result["exact"]["edit_similarity"] == result["serving"]["edit_similarity"] == pytest.approx(0.5)
    assert result["edit_similarity_difference"] == 0.0 and result["edit_similarity_standard_error"] == 0.0
    assert result["within_noise"]


def test_paired_quality_needs_two_holes(random_checkpoint):
    with pytest.raises(ValueError, match="at least 2 holes"):
        paired_quality(random_checkpoint, HOLES[:1])


def test_quantization_quality_pairs_each_scheme_with_the_unquantised_model(random_checkpoint):
    result = quantization_quality(random_checkpoint, HOLES, seed=5, schemes=("int4-g32", "fp8"))
    variants = result["variants"]
    assert list(variants) == ["unquantised", "int4-g32", "fp8"] and result["holes"] == len(HOLES)
    assert "edit_similarity_difference" not in variants["unquantised"]
    for scheme in ("int4-g32", "fp8"):
        figures = variants[scheme]
        assert figures["mode"] == "serving" and 0.0 <= figures["edit_similarity"] <= 1.0
        assert math.isclose(figures["edit_similarity_difference"],
                            figures["edit_similarity"] - variants["unquantised"]["edit_similarity"], abs_tol=1e-12)
        assert 0.0 <= figures["same_middles"] <= 1.0 and figures["edit_similarity_standard_error"] >= 0.0
