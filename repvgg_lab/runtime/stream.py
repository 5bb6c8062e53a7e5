"""The streamed evaluator: any set of nets measured together over batches of (images, labels),
one batch at a time, so memory stays that of one batch however large the split.

Per net it accumulates the correct predictions, the top-1 agreement with a reference net, and
max|out - ref| beside max|ref|; all three are exact as running counts and maxima, so the result
equals a whole-split evaluation (`rel_max` of the concatenated outputs) without holding it."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from repvgg_lab.progress import Progress

Net = Callable[[Tensor], Tensor]
Batch = tuple[Tensor, Tensor]


def as_batches(data: Iterable[Batch] | tuple[Tensor, Tensor], batch: int = 256) -> Iterable[Batch]:
    """`data` as (images, labels) batches: an (images, labels) pair of tensors is split into
    chunks of `batch`; anything else (a DataLoader) is taken as it is."""
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        images, labels = data
        return list(zip(torch.split(images, batch), torch.split(labels, batch), strict=True))
    return data


def batch_count(data: Iterable) -> int | None:
    """How many images `data` will yield, when it can tell without loading them."""
    dataset = getattr(data, "dataset", None)
    if dataset is not None and hasattr(dataset, "__len__"):
        return len(dataset)
    if isinstance(data, list):
        return sum(int(x.shape[0]) for x, _ in data)
    return None


@dataclass
class _Tally:
    """Running counts for one net."""

    correct: int = 0
    agree: int = 0
    max_err: float = 0.0


@dataclass(frozen=True)
class Evaluation:
    """What `evaluate_stream` measured: per net, accuracy on the labels, and against the
    reference net top-1 agreement and max|out - ref| / max|ref| (`rel_max`)."""

    images: int
    acc: dict[str, float]
    top1_agree: dict[str, float] = field(default_factory=dict)
    rel_max: dict[str, float] = field(default_factory=dict)


def _rel(err: float, scale: float) -> float:
    """err / scale, 0 when both are zero, inf when only the scale is."""
    if math.isnan(err) or math.isnan(scale):
        return math.nan
    if scale == 0.0:
        return 0.0 if err == 0.0 else math.inf
    return err / scale


def _nanmax(a: float, b: float) -> float:
    """max(a, b), NaN when either is NaN (a NaN output must not vanish from the maximum)."""
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


def _batches(data: Iterable[Batch]) -> Iterator[Batch]:
    """(images, labels) of each item, labels as a CPU long tensor."""
    for item in data:
        x, y = item[0], item[1]
        yield x, torch.as_tensor(y).long().cpu()


def evaluate_stream(
    nets: Mapping[str, Net],
    data: Iterable[Batch] | tuple[Tensor, Tensor],
    reference: str | None = None,
    desc: str = "evaluate",
    progress: bool = True,
) -> Evaluation:
    """Run every net in `nets` on each batch of `data` ((images, labels) batches, e.g. a
    DataLoader, or an (images, labels) pair) and accumulate accuracy, and, for `reference`
    (a key of `nets`), every net's top-1 agreement with it and max|err| / max|ref|. Nothing
    proportional to the number of images is kept. Progress: a bar on a terminal, log lines
    elsewhere, only when the work lasts more than a few seconds."""
    if reference is not None and reference not in nets:
        raise KeyError(f"reference {reference!r} is not one of the nets {sorted(nets)}")
    tallies = {name: _Tally() for name in nets}
    images, ref_scale = 0, 0.0
    batches = as_batches(data)
    with Progress(batch_count(batches) or 0, desc, enabled=progress) as bar:
        for x, labels in _batches(batches):
            outputs = {name: net(x).detach().cpu() for name, net in nets.items()}
            ref = outputs[reference] if reference is not None else None
            if ref is not None:
                ref_scale = _nanmax(ref_scale, float(ref.double().abs().max()))
            for name, y in outputs.items():
                tally, top1 = tallies[name], y.argmax(dim=1)
                tally.correct += int((top1 == labels).sum())
                if ref is not None:
                    tally.agree += int((top1 == ref.argmax(dim=1)).sum())
                    err = float((y.double() - ref.double()).abs().max())
                    tally.max_err = _nanmax(tally.max_err, err)
            images += int(labels.shape[0])
            bar.update(int(labels.shape[0]))
    if images == 0:
        raise ValueError(f"{desc}: no images to evaluate")
    acc = {name: t.correct / images for name, t in tallies.items()}
    if reference is None:
        return Evaluation(images, acc)
    agree = {name: t.agree / images for name, t in tallies.items()}
    rel = {name: _rel(t.max_err, ref_scale) for name, t in tallies.items()}
    return Evaluation(images, acc, agree, rel)
