"""How analysis results read in details and explanations: percentages, p-values, milliseconds."""

from __future__ import annotations

from typing import Any


def percent(fraction: float) -> str:
    value = fraction * 100
    if 0 < value < 0.1:
        # 0.0% would read as "no errors at all".
        return f"{value:.2g}%"
    return f"{value:.1f}%"


def confidence(alpha: float) -> str:
    return f"{(1 - alpha) * 100:g}%"


def p_text(p_value: float, bound: bool = False) -> str:
    if p_value < 0.001:
        return "p<0.001"
    return f"p{'<=' if bound else '='}{p_value:.2g}"


def ms(milliseconds: float) -> str:
    if milliseconds >= 100:
        return f"{milliseconds:.0f} ms"
    if milliseconds >= 10:
        return f"{milliseconds:.1f} ms"
    return f"{milliseconds:.2g} ms"


def value_text(estimate: float | None) -> str:
    if estimate is None:
        return "n/a"
    if abs(estimate) >= 10_000:
        return f"{estimate:,.0f}"
    return f"{estimate:.3g}"


def optional_float(value: Any) -> float | None:
    return None if value is None else float(value)
