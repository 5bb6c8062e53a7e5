"""`PruneOptions`: every pruning option, checked once, when the object is made."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

from repvgg_lab.errors import PruningError, check_choice, check_integer, check_number

Scope = Literal["layer", "global"]
Score = Literal["l2", "l2_next"]
CRITERIA = ("threshold", "ratio", "macs_reduction")
# Keys of the config's `prune` node that are not pruning options: the switch, and the sparsity
# weight of the training loss (the gates, not the pruning, use it).
NODE_ONLY = ("enabled", "sparsity")


@dataclass(frozen=True)
class PruneOptions:
    """How to prune: one criterion and the options of docs/pruning.md sections 3, 3a and 6.

    Exactly one criterion: `threshold` (remove channels scoring <= it; 0 is exact), `ratio`
    (that fraction of the channels, per layer or of the whole net: `scope`) or `macs_reduction`
    (the least pruning that removes that fraction of the MACs); none given means threshold 0.
    `calibration_batches` > 0 recalibrates lossy pruning on that many batches of real images;
    `latency_rounds` > 0 times the net at batch 1 before and after. Invalid values raise a
    one-line `PruningError` naming the option as configs/ spell it (`prune.ratio`)."""

    threshold: float | None = None
    ratio: float | None = None
    macs_reduction: float | None = None
    scope: Scope = "global"
    score: Score = "l2"
    normalize: bool = False
    min_channels: int = 1
    multiple: int = 1
    calibration_batches: int = 0
    latency_rounds: int = 0

    def __post_init__(self) -> None:
        """Check every option once; the criterion becomes a float (threshold 0 if none)."""
        chosen = [k for k in CRITERIA if getattr(self, k) is not None]
        if len(chosen) > 1:
            names = " and ".join(f"prune.{k}" for k in chosen)
            raise PruningError(
                f"give exactly one pruning criterion, got {names} (set the others to null, "
                f"e.g. prune.{chosen[-1]}=null)"
            )
        if not chosen:
            # Exact pruning only: the one setting that can never cost accuracy.
            object.__setattr__(self, "threshold", 0.0)
        self._check_criterion()
        check_choice(PruningError, "prune.scope", self.scope, get_args(Scope))
        check_choice(PruningError, "prune.score", self.score, get_args(Score))
        check_choice(PruningError, "prune.normalize", self.normalize, (False, True))
        check_integer(PruningError, "prune.min_channels", self.min_channels, 1)
        check_integer(PruningError, "prune.multiple", self.multiple, 1)
        check_integer(PruningError, "prune.calibration_batches", self.calibration_batches, 0)
        check_integer(PruningError, "prune.latency_rounds", self.latency_rounds, 0)

    def _check_criterion(self) -> None:
        """The one criterion as a float within its range (an int from the command line too)."""
        name, value = self.criterion
        number = check_number(PruningError, f"prune.{name}", value)
        if name == "ratio" and not 0.0 <= number <= 1.0:
            raise PruningError(f"prune.ratio must lie in [0, 1], got {value!r}")
        if name == "macs_reduction" and not 0.0 < number < 1.0:
            raise PruningError(f"prune.macs_reduction must lie in (0, 1), got {value!r}")
        if name == "threshold" and math.isinf(number) and number > 0:
            raise PruningError(f"prune.threshold must be finite, got {value!r}")
        object.__setattr__(self, name, number)

    @property
    def criterion(self) -> tuple[str, float]:
        """(name, value) of the criterion in use: "threshold", "ratio" or "macs_reduction"."""
        return next((k, getattr(self, k)) for k in CRITERIA if getattr(self, k) is not None)

    def as_dict(self) -> dict[str, Any]:
        """The options as plain values (report.json's `settings.prune`)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any] | None) -> PruneOptions | None:
        """The options of a config's `prune` node; None when it asks for no pruning (not
        `enabled` and no criterion set). Null values take the defaults; unknown keys and bad
        values are refused either way."""
        if not node:
            return None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(node) - known - set(NODE_ONLY))
        if unknown:
            allowed = ", ".join(sorted(known | set(NODE_ONLY)))
            raise PruningError(f"unknown option prune.{unknown[0]}; the prune node has {allowed}")
        # Checked even when pruning is off: a bad value should not wait until it is switched on.
        options = cls(**{k: v for k, v in node.items() if k in known and v is not None})
        if not node.get("enabled") and all(node.get(k) is None for k in CRITERIA):
            return None
        return options
