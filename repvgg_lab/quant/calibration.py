"""The images int8 calibration reads: a tensor split into batches, or the first batches of a
DataLoader decoded as they are read; and ONNX Runtime's reader over them, one batch per
calibration step so that memory holds one batch's activations whatever the batch count."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from repvgg_lab.errors import QuantizationError
from repvgg_lab.runtime.export import ONNX_INPUT

log = logging.getLogger(__name__)


def calibration_chunks(images: Tensor, batches: int) -> tuple[Tensor, ...]:
    """`images` in the `batches` chunks calibration reads, every image in one of them."""
    if images.ndim != 4 or images.shape[0] < batches:
        raise QuantizationError(
            f"calibration needs a (N, C, H, W) image batch with N >= quantize.calibration_batches"
            f"={batches}, got shape {tuple(images.shape)}"
        )
    return torch.tensor_split(images, batches)


Source = Tensor | tuple[Tensor, Tensor] | DataLoader


class CalibrationBatches:
    """The images calibration reads, as at most `count` batches, read anew on every pass: a
    tensor (or an (images, labels) pair) split into `count` chunks, or the first `count`
    batches of a DataLoader, whose images are decoded when read and not kept."""

    def __init__(self, source: Source | CalibrationBatches, count: int) -> None:
        if isinstance(source, CalibrationBatches):
            source = source.source
        if isinstance(source, tuple):
            source = source[0]
        self.source, self.count = source, count
        if isinstance(source, Tensor):
            self._chunks: tuple[Tensor, ...] | None = calibration_chunks(source, count)
            self.sizes = [len(c) for c in self._chunks]
        elif isinstance(source, DataLoader):
            self._chunks = None
            self.sizes = [len(b) for b in islice(source.batch_sampler or [], count)]
            if not self.sizes:
                raise QuantizationError("calibration needs images: the calibration loader is empty")
            if len(self.sizes) < count:
                log.warning(
                    "calibration: %d batches asked for (quantize.calibration_batches), the data "
                    "has %d",
                    count,
                    len(self.sizes),
                )
        else:
            raise QuantizationError(
                f"calibration images must be a tensor or a DataLoader, got {type(source).__name__}"
            )

    @property
    def images(self) -> int:
        """How many images one pass reads."""
        return sum(self.sizes)

    def __len__(self) -> int:
        return len(self.sizes)

    def __iter__(self) -> Iterator[Tensor]:
        """Each batch's images, float32 on the CPU."""
        if self._chunks is not None:
            batches: Iterable[Any] = self._chunks
        else:
            batches = islice(self.source, len(self.sizes))
        for batch in batches:
            x = batch[0] if isinstance(batch, list | tuple) else batch
            yield x.detach().float().cpu()

    def head(self, limit: int) -> Iterator[Tensor]:
        """The batches of one pass up to `limit` images (the last one cut to fit)."""
        left = limit
        for x in self:
            if left <= 0:
                return
            yield x[:left]
            left -= len(x)


def calibration_reader(batches: CalibrationBatches, input_name: str = ONNX_INPUT) -> Any:
    """An ONNX Runtime `CalibrationDataReader` over `batches`, one batch at a time; it serves
    `CalibStridedMinMax` ranges in order, so ONNX Runtime collects (and drops) the
    intermediate outputs of one batch before it reads the next."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        """Yields {input_name: batch} for the batches of the current range, then None."""

        def __init__(self) -> None:
            """The whole pass as the range, from the first batch."""
            self.set_range(0, len(batches))

        def __len__(self) -> int:
            return len(batches)

        def set_range(self, start_index: int, end_index: int) -> None:
            """Serve batches [start_index, end_index); going back restarts the pass."""
            if start_index == 0 or start_index < self._position:
                self._items, self._position = iter(batches), 0
            while self._position < start_index:
                next(self._items)
                self._position += 1
            self._end = end_index

        def get_next(self) -> dict[str, np.ndarray] | None:
            """The next batch as an ONNX Runtime feed, None at the end of the range."""
            if self._position >= self._end:
                return None
            chunk = next(self._items, None)
            self._position += 1
            return None if chunk is None else {input_name: chunk.numpy()}

        def rewind(self) -> None:
            """Start again from the first batch (calibrators may read twice)."""
            self.set_range(0, len(batches))

    return _Reader()
