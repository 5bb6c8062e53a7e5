"""Measured numbers and claims in the docs' prose, outside the generated blocks, each tied to the
committed results file it comes from.

A generated block is re-rendered from its results file; a sentence around it is not. So every
sentence that quotes a measurement (a number, a verdict such as "MISSED", a comparison such as
"under half") is registered here as a `Quote`: its text, with `{}` fields for the numbers that
`values` computes from the results file, and `holds`, the condition on the same file under which
the sentence is true. The docs test checks, for every quote, that the doc still holds the
rendered text and that the condition holds, so a stale number or a claim the committed results
no longer support fails, naming the sentence. Numbers that are not measurements (settings,
defaults, paper figures with their citation, arithmetic) stay plain prose."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repvgg_lab.results import read_results
from repvgg_lab.studies.docs import RESULTS_DIR

Record = dict[str, Any]


def _no_values(record: Record) -> tuple[Any, ...]:
    return ()


def _always(record: Record) -> bool:
    return True


@dataclass(frozen=True)
class Quote:
    """`text` (with `{}` fields filled by `values`) in `doc`, true while `holds`; both read the
    results file `results` in docs/results/ (None: computed from the code, `values` gets {})."""

    doc: str
    text: str
    results: str | None
    values: Callable[[Record], tuple[Any, ...]] = _no_values
    holds: Callable[[Record], bool] = _always


def normalized(text: str) -> str:
    """`text` with every run of whitespace (line breaks of wrapped prose) as one space."""
    return " ".join(text.split())


def _record(root: Path, quote: Quote) -> Record:
    return read_results(root / RESULTS_DIR / quote.results) if quote.results else {}


def quote_text(root: Path, quote: Quote) -> str:
    """The sentence as the committed results say it should read."""
    return normalized(quote.text.format(*quote.values(_record(root, quote))))


def check_quote(root: Path, quote: Quote) -> str | None:
    """None when `quote.doc` says the quote and its results support it; else the problem."""
    record = _record(root, quote)
    expected = normalized(quote.text.format(*quote.values(record)))
    source = quote.results or "the code"
    if expected not in normalized((root / quote.doc).read_text(encoding="utf-8")):
        return f"{quote.doc} should say {expected!r} (from {source}); update the prose"
    if not quote.holds(record):
        return f"{quote.doc}: {expected!r} is no longer true of {source}; rewrite the claim"
    return None


# Helpers the quotes share.


def results(record: Record) -> dict[str, Any]:
    """The measured part of a results file."""
    return record["results"]


def median(values: Iterable[float]) -> float:
    """The median of `values`."""
    return statistics.median(list(values))


def decades(values: Iterable[float]) -> str:
    """The powers of ten around `values`: "1e-7–1e-6" for values between 1e-7 and 1e-6."""
    logs = [math.log10(v) for v in values]
    return f"1e{math.floor(min(logs))}–1e{math.ceil(max(logs))}"


def image_count(accuracies: Iterable[float], most: int = 100_000) -> int:
    """The smallest image count that makes every accuracy a whole number of images."""
    accs = list(accuracies)
    return next(n for n in range(1, most) if all(abs(a * n - round(a * n)) < 1e-6 for a in accs))


def round_to(value: float, step: float) -> int:
    """`value` rounded to a multiple of `step` (minutes "about 15")."""
    return int(step * round(value / step))


def number_word(count: int) -> str:
    """Small counts as the docs write them."""
    return ("no", "one", "two", "three", "four", "five")[count] if count <= 5 else str(count)


def all_quotes() -> list[Quote]:
    """Every registered quote of README.md and docs/*.md."""
    from repvgg_lab.studies import prose_claims

    return prose_claims.QUOTES


def prose_problems(root: Path) -> list[str]:
    """Every registered quote that its doc or its results file no longer supports."""
    problems = (check_quote(root, quote) for quote in all_quotes())
    return [problem for problem in problems if problem is not None]
