"""A small module with a hole: `make infill` completes the `return` line of `mean`."""


def total(values):
    """Return the sum of a list of numbers."""
    result = 0
    for value in values:
        result += value
    return result


def mean(values):
    """Return the arithmetic mean of a non-empty list of numbers."""
    if not values:
        raise ValueError("mean of an empty list")
    return 


def variance(values):
    """Return the population variance of a non-empty list of numbers."""
    centre = mean(values)
    return sum((value - centre) ** 2 for value in values) / len(values)
