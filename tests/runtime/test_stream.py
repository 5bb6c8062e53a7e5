"""The streamed evaluator: the same numbers as a whole-split evaluation, batch by batch, without
keeping earlier batches or outputs alive; progress as log lines when the output is a file."""

from __future__ import annotations

import gc
import logging
import math
import weakref

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from repvgg_lab.progress import Progress
from repvgg_lab.reparam import rel_max, top1_agree
from repvgg_lab.runtime import evaluate_stream, torch_fn


def _nets() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(3)
    a = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    b = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b[1].weight.add_(0.3 * torch.randn_like(b[1].weight))
    return a, b


def test_streamed_numbers_equal_the_whole_split_ones() -> None:
    a, b = _nets()
    x = torch.randn(53, 3, 2, 2)
    labels = torch.randint(0, 5, (53,))
    loader = DataLoader(TensorDataset(x, labels), batch_size=7)  # a ragged last batch
    result = evaluate_stream({"a": torch_fn(a), "b": torch_fn(b)}, loader, reference="a")
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert result.images == 53
    assert result.acc["b"] == float((yb.argmax(1) == labels).double().mean())
    assert result.acc["a"] == float((ya.argmax(1) == labels).double().mean())
    assert result.top1_agree["b"] == top1_agree(ya, yb) < 1.0
    assert result.rel_max["b"] == pytest.approx(rel_max(ya, yb), rel=1e-12)
    assert result.rel_max["a"] == 0.0 and result.top1_agree["a"] == 1.0


def test_an_images_labels_pair_is_split_into_batches_with_the_same_result() -> None:
    a, b = _nets()
    x, labels = torch.randn(300, 3, 2, 2), torch.randint(0, 5, (300,))
    nets = {"a": torch_fn(a), "b": torch_fn(b)}
    whole = evaluate_stream(nets, (x, labels), reference="a")
    batched = evaluate_stream(nets, DataLoader(TensorDataset(x, labels), batch_size=64), "a")
    assert whole == batched and whole.images == 300


def test_earlier_batches_and_outputs_are_not_kept() -> None:
    seen: list[weakref.ref] = []
    alive_at_each_batch: list[int] = []

    def net(x: Tensor) -> Tensor:
        gc.collect()
        alive_at_each_batch.append(sum(r() is not None for r in seen))
        y = x.flatten(1)[:, :4].clone()
        seen.append(weakref.ref(y))
        return y

    def batches():
        for _ in range(6):
            x = torch.randn(5, 3, 2, 2)
            seen.append(weakref.ref(x))
            yield x, torch.zeros(5, dtype=torch.long)

    evaluate_stream({"net": net}, batches(), reference="net")
    # At each call only the batch being evaluated is alive: no input or output of an earlier
    # batch is held, so memory does not grow with the number of images.
    assert alive_at_each_batch == [1] * 6


def test_a_nan_output_shows_in_rel_max() -> None:
    def ref(x: Tensor) -> Tensor:
        return x.flatten(1)

    def broken(x: Tensor) -> Tensor:
        y = x.flatten(1).clone()
        y[0, 0] = math.nan
        return y

    data = [(torch.randn(4, 1, 2, 2), torch.zeros(4, dtype=torch.long))] * 2
    result = evaluate_stream({"ref": ref, "broken": broken}, data, reference="ref")
    assert math.isnan(result.rel_max["broken"]) and result.rel_max["ref"] == 0.0


def test_no_images_is_an_error_not_a_zero_accuracy() -> None:
    with pytest.raises(ValueError, match="no images"):
        evaluate_stream({"a": lambda x: x}, [], desc="empty")


def test_progress_writes_log_lines_off_a_terminal(caplog) -> None:
    caplog.set_level(logging.INFO, logger="repvgg_lab.progress")
    with Progress(20, "verify", quiet_for=0.0, min_interval=0.0) as bar:
        for _ in range(20):
            bar.update()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10 and lines[-1].startswith("verify: 20 / 20 img (100%")
    caplog.clear()
    with Progress(20, "verify") as bar:  # short work says nothing
        for _ in range(20):
            bar.update()
    assert caplog.records == []
