"""Quantization options, validated once, with one-line messages that name the option as typed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from repvgg_lab.errors import QuantizationError, check_integer

METHODS = ("minmax", "percentile", "entropy")
PRECISIONS = ("none", "int8")


def check_precision(value: str | None) -> str | None:
    """`quantize=<value>` as given by a user: None for none, "int8" for int8, else an error."""
    text = "none" if value is None else str(value).strip().lower()
    if text not in PRECISIONS:
        raise QuantizationError(f"quantize={value} is not supported; use {' or '.join(PRECISIONS)}")
    return None if text == "none" else text


@dataclass(frozen=True)
class QuantOptions:
    """How a net is put into int8: ONNX Runtime static QDQ quantization, int8 symmetric weights
    (per output channel unless `per_channel` is false), uint8 asymmetric activations calibrated
    with `method` on images split into `calibration_batches` batches; `equalize` applies
    cross-layer equalization to the torch net first; `percentile` is the kept fraction (in %)
    for the percentile method."""

    method: str = "minmax"
    calibration_batches: int = 16
    per_channel: bool = True
    equalize: bool = False
    precision: str = "int8"
    percentile: float = 99.999

    def __post_init__(self) -> None:
        """Refuse a bad option with a one-line message naming it as `quantize.<name>`."""
        if self.method not in METHODS:
            raise QuantizationError(
                f"quantize.method must be one of {', '.join(METHODS)}, got {self.method!r}"
            )
        check_integer(
            QuantizationError, "quantize.calibration_batches", self.calibration_batches, 1
        )
        for name in ("per_channel", "equalize"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise QuantizationError(f"quantize.{name} must be true or false, got {value!r}")
        if self.precision != "int8":
            raise QuantizationError(f"quantize.precision must be int8, got {self.precision!r}")
        ok = isinstance(self.percentile, int | float) and not isinstance(self.percentile, bool)
        if not ok or not 90.0 <= float(self.percentile) < 100.0:
            raise QuantizationError(
                f"quantize.percentile must be a number in [90, 100), got {self.percentile!r}"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> QuantOptions:
        """Options from a config mapping (e.g. the `quantize` group); unknown keys are refused."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise QuantizationError(
                f"unknown option quantize.{unknown[0]}; known: {', '.join(known)}"
            )
        return cls(**dict(values))
