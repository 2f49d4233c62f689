"""Argument types of the mix-perception commands: argparse `type=` callables that parse and validate one
value and raise argparse.ArgumentTypeError with the reason."""

import argparse
import math


def _integer_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
    return value


def positive_int(text: str) -> int:
    return _integer_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    return _integer_at_least(text, 0)


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def fraction(text: str) -> float:
    value = finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def fraction_below_one(text: str) -> float:
    value = finite_float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def float_list(text: str) -> list[float]:
    """'0,0.5,1' -> [0.0, 0.5, 1.0] (finite numbers, at least one)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("expected a comma-separated list of numbers")
    return [finite_float(p) for p in parts]


def positive_list(text: str) -> list[float]:
    """'1,2,4' -> [1.0, 2.0, 4.0] (positive finite numbers, at least one), e.g. logit scales."""
    values = float_list(text)
    bad = [v for v in values if v <= 0]
    if bad:
        raise argparse.ArgumentTypeError(f"must be > 0, got {bad}")
    return values


def alpha_list(text: str) -> list[float]:
    values = float_list(text)
    bad = [v for v in values if not 0.0 <= v <= 1.0]
    if bad:
        raise argparse.ArgumentTypeError(f"alphas must lie in [0, 1], got {bad}")
    return sorted(set(values))


def name_list(choices):
    def parse(text: str) -> list[str]:
        if text.strip().lower() in ("", "none"):
            return []
        names = [p.strip().lower() for p in text.split(",") if p.strip()]
        unknown = [n for n in names if n not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(choices)}")
        return list(dict.fromkeys(names))

    return parse


def transform_spec(text: str):
    """'none' | 'logit_scale:S' | 'mixednuts:S,P,C' -> core.transforms.Transform."""
    from mix_perception.core.transforms import Transform

    kind, _, values = text.strip().lower().partition(":")
    try:
        if kind == "none" and not values:
            return Transform()
        if kind == "logit_scale":
            return Transform("logit_scale", positive_float(values))
        if kind == "mixednuts":
            scale, power, offset = (finite_float(v) for v in values.split(","))
            if scale <= 0 or power < 1:
                raise argparse.ArgumentTypeError("mixednuts needs scale > 0 and power >= 1")
            return Transform("mixednuts", scale, power, offset)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected none, logit_scale:S or mixednuts:S,P,C; got {text!r}")
