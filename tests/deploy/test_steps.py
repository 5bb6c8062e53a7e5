"""The steps of `deploy()` one by one, on a real checkpoint, real exports and ONNX Runtime: each
returns a frozen result and leaves what it was given exactly as it was."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from repvgg_lab.deploy import DeployOptions, steps
from repvgg_lab.deploy.int8 import Quantized, quantize
from repvgg_lab.deploy.report import FILES
from repvgg_lab.deploy.run import assemble
from repvgg_lab.prune import PruneOptions

SIZE = 32


def _state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def _same(net: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    now = net.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, a0, save_lightning):
    return save_lightning(a0, tmp_path_factory.mktemp("steps") / "a0.ckpt")


@pytest.mark.parametrize(
    "pruning", [None, PruneOptions(threshold=0.0), PruneOptions(ratio=0.3)], ids=str
)
def test_steps_do_not_change_their_inputs(ckpt, tmp_path, pruning) -> None:
    options = DeployOptions(batch_sizes=(1,), rounds=1, warmup=0, verify_batch=2, prune=pruning)
    before = copy.deepcopy(options)
    loaded = steps.load(ckpt, options)
    src = loaded.src
    plain, source = _state(src.plain), _state(src.trained)
    verified = steps.verify(loaded, options)
    x, truth = verified.x.clone(), verified.truth.clone()

    pruned = steps.prune(loaded, verified, options)
    assert loaded.src is src and _same(src.plain, plain) and _same(src.trained, source)
    assert torch.equal(verified.x, x) and torch.equal(verified.truth, truth)
    if pruning is None:
        assert pruned.src is src and pruned.unpruned is None and pruned.summary is None
    else:
        assert pruned.src is not src and pruned.unpruned is src.plain
        assert pruned.src.plain is not src.plain
        # A trained-like net has no zero filters: threshold 0 removes nothing, a ratio does.
        macs = pruned.metrics["prune/macs_after"], pruned.metrics["prune/macs_before"]
        assert macs[0] < macs[1] if pruning.ratio else macs[0] == macs[1]
        assert "prune/latency_before_ms" in pruned.metrics  # timed with latency.rounds
    assert pruned.lossy == (pruning is not None and pruning.ratio is not None)
    pruned_state = _state(pruned.src.plain)

    staged = steps.stage(pruned, verified, loaded.tolerance, options.opset, tmp_path)
    measured = steps.measure(loaded, verified, pruned, staged, options)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        FILES[k] for k in ("onnx", "program", "weights")
    )
    assert _same(pruned.src.plain, pruned_state) and _same(src.plain, plain)
    assert torch.equal(verified.x, x) and torch.equal(verified.truth, truth)
    assert measured.costs["macs/deploy"] == pruned.metrics.get(
        "prune/macs_after", measured.costs["macs/deploy"]
    )
    assert measured.metrics["latency/bs1/deploy_ms"] > 0

    quantized = quantize(pruned.src.plain, verified.real, options, tmp_path)
    assert quantized == Quantized({}, {})  # no quantize option: the int8 step does nothing
    report = assemble(ckpt, options, loaded, verified, pruned, staged, measured, quantized)
    assert ("prune" in report) == (pruning is not None)
    assert report["reference"].endswith("prune/rel_max)") == pruned.lossy
    assert options == before  # the options object is frozen and unchanged
    for result in (loaded, verified, pruned, staged, measured):
        with pytest.raises(dataclasses.FrozenInstanceError):
            result.metrics = {}  # type: ignore[misc]


def test_load_leaves_the_checkpoints_source_as_read(ckpt) -> None:
    loaded = steps.load(ckpt, DeployOptions(input_size=48))
    again = steps.load(ckpt, DeployOptions())
    assert loaded.input_size == 48 and again.input_size == SIZE  # the checkpoint's own size
    assert loaded.src is not again.src
