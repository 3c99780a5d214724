"""diffgemma-bench: headless infilling benchmark (HumanEval-Infilling and holes drawn from any source tree)."""


class BenchError(Exception):
    """A problem the user can fix (bad input, missing data, an unusable output directory); printed without a trace."""
