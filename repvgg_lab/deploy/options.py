"""`DeployOptions`: every option of a deploy, checked once, before any work is done."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from repvgg_lab.deploy.verify import check_verify_data
from repvgg_lab.errors import DeployError, check_integer, is_integer
from repvgg_lab.prune import PruneOptions
from repvgg_lab.quant.options import QuantOptions
from repvgg_lab.runtime.export import DEFAULT_OPSET, OPSETS

DEFAULT_INPUT_SIZE = 224


@dataclass(frozen=True)
class DeployOptions:
    """What `deploy()` does besides reading the checkpoint (configs/deploy/deploy.yaml).

    `model`: the architecture of files that do not name it. `out_dir`: where the files land.
    `input_size`: H = W of the checks, MACs and latency (None: the checkpoint's training size,
    else 224). `tolerance`: max|err|/max|ref| allowed against float64 (None: the dtype's
    default). `batch_sizes`, `rounds`, `warmup`: the latency measurement (no batch sizes: none).
    `verify_*`: the synthetic check batch and, with `verify_data`, real images, read in
    `verify_batch` batches by `workers` loader processes (None: the data module's count, at
    most the CPUs; 0: in this process). `opset`: the
    ONNX opset. `seed`: of the synthetic batch (None: fresh). `threads`: CPU threads of PyTorch
    and ONNX Runtime (None: PyTorch's default). `prune`: prune the verified plain net first.
    A bad value raises a one-line `DeployError` (`PruningError` for `prune`) naming the option
    as the command line spells it."""

    model: str | None = None
    out_dir: Path = Path(".")
    input_size: int | None = None
    tolerance: float | None = None
    batch_sizes: Sequence[int] = (1, 8)
    rounds: int = 9
    warmup: int = 3
    verify_data: str | None = None
    verify_root: str | None = None
    verify_size: int = 64
    verify_batch: int = 8
    workers: int | None = None
    opset: int = DEFAULT_OPSET
    seed: int | None = 0
    threads: int | None = None
    prune: PruneOptions | None = None
    quantize: QuantOptions | None = None

    def __post_init__(self) -> None:
        """Check every option once; normalise `out_dir` to a Path, `batch_sizes` to a tuple."""
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if not is_integer(self.opset) or self.opset not in OPSETS:
            raise DeployError(
                f"export.opset must be an integer from {OPSETS.start} to {OPSETS.stop - 1}, "
                f"got {self.opset!r}"
            )
        for name, value, low in (
            ("input_size", self.input_size, 1),
            ("latency.rounds", self.rounds, 1),
            ("latency.warmup", self.warmup, 0),
            ("verify.batch", self.verify_batch, 1),
            ("verify.size", self.verify_size, 1),
            ("verify.workers", self.workers, 0),
            ("threads", self.threads, 1),
        ):
            if value is not None:
                check_integer(DeployError, name, value, low)
        self._check_tolerance_and_batches()
        check_verify_data(self.verify_data, self.verify_root)
        self._check_prune()
        if self.quantize is not None and not self.verify_data:
            raise DeployError(
                "quantize=int8 needs real images to calibrate and measure on: set "
                "verify.data=digits|imagenet"
            )

    def _check_tolerance_and_batches(self) -> None:
        """A positive tolerance, positive integer batch sizes (kept as a tuple)."""
        tol = self.tolerance
        if tol is not None and (
            isinstance(tol, bool) or not isinstance(tol, int | float) or not tol > 0
        ):
            raise DeployError(f"tolerance must be a positive number, got {tol!r}")
        sizes = self.batch_sizes
        if not isinstance(sizes, list | tuple) or not all(is_integer(b) and b >= 1 for b in sizes):
            raise DeployError(f"latency.batch_sizes must be positive integers, got {sizes!r}")
        object.__setattr__(self, "batch_sizes", tuple(sizes))

    def _check_prune(self) -> None:
        """Pruning options that a deploy cannot honour."""
        if self.prune is None:
            return
        if not isinstance(self.prune, PruneOptions):
            raise DeployError(f"prune must be PruneOptions, got {type(self.prune).__name__}")
        if self.prune.calibration_batches and not self.verify_data:
            raise DeployError(
                "prune.calibration_batches needs real images: set verify.data=digits|imagenet"
            )
        if self.prune.latency_rounds:
            raise DeployError(
                "prune.latency_rounds is a training option; deploy times the net before and "
                "after pruning with latency.rounds"
            )

    @property
    def calibration_images(self) -> int:
        """Training images of `verify_data` that recalibrate lossy pruning or calibrate the
        int8 activation ranges (0: none)."""
        prune = self.prune.calibration_batches if self.prune else 0
        quantize = self.quantize.calibration_batches if self.quantize else 0
        return max(prune, quantize) * self.verify_batch

    @property
    def prune_timing(self) -> PruneOptions | None:
        """The pruning options as the prune step uses them: timed before and after with
        `rounds` whenever the deploy measures latency at all."""
        if self.prune is None:
            return None
        return replace(self.prune, latency_rounds=self.rounds if self.batch_sizes else 0)
