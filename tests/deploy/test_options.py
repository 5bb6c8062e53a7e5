"""`DeployOptions`: every bad option is refused in one line before any work, and the pipeline
turns configs/deploy/deploy.yaml into the same object."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from repvgg_lab.deploy import DeployError, DeployOptions, deploy
from repvgg_lab.errors import InputError, PruningError
from repvgg_lab.pipeline.deploy import config_values, deploy_options
from repvgg_lab.prune import PruneOptions

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "deploy"

BAD = {
    "input_size": ({"input_size": 0}, "input_size must be an integer >= 1, got 0"),
    "input_size float": ({"input_size": 32.0}, "input_size must be an integer >= 1, got 32.0"),
    "rounds": ({"rounds": 0}, "latency.rounds must be an integer >= 1, got 0"),
    "warmup": ({"warmup": -1}, "latency.warmup must be an integer >= 0, got -1"),
    "verify batch": ({"verify_batch": 0}, "verify.batch must be an integer >= 1, got 0"),
    "verify size": ({"verify_size": True}, "verify.size must be an integer >= 1, got True"),
    "verify workers": ({"workers": -1}, "verify.workers must be an integer >= 0, got -1"),
    "threads": ({"threads": 0}, "threads must be an integer >= 1, got 0"),
    "tolerance": ({"tolerance": 0.0}, "tolerance must be a positive number, got 0.0"),
    "tolerance text": ({"tolerance": "1e-4"}, "tolerance must be a positive number"),
    "opset": ({"opset": 10}, "export.opset must be an integer from 11 to 20, got 10"),
    "batch sizes": ({"batch_sizes": [1, 0]}, "latency.batch_sizes must be positive integers"),
    "batch sizes text": ({"batch_sizes": "8"}, "latency.batch_sizes must be positive integers"),
    "batch sizes int": ({"batch_sizes": 8}, "latency.batch_sizes must be positive integers"),
    "verify data": ({"verify_data": "cifar"}, "unknown verify.data='cifar'"),
    "imagenet root": ({"verify_data": "imagenet"}, "verify.data=imagenet needs verify.root"),
    "calibration without images": (
        {"prune": PruneOptions(ratio=0.2, calibration_batches=2)},
        "prune.calibration_batches needs real images: set verify.data",
    ),
    "training-only latency rounds": (
        {"prune": PruneOptions(latency_rounds=3)},
        "prune.latency_rounds is a training option",
    ),
    "prune as a dict": ({"prune": {"ratio": 0.2}}, "prune must be PruneOptions, got dict"),
}


@pytest.mark.parametrize("case", BAD)
def test_each_bad_option_is_one_line_naming_it(case) -> None:
    values, message = BAD[case]
    with pytest.raises(DeployError) as err:
        DeployOptions(**values)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_values_are_normalised_once() -> None:
    options = DeployOptions(out_dir="out", batch_sizes=[1, 4])
    assert options.out_dir == Path("out") and options.batch_sizes == (1, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.rounds = 3  # type: ignore[misc]


def test_pruning_is_timed_with_the_latency_node() -> None:
    options = DeployOptions(rounds=4, prune=PruneOptions(ratio=0.2))
    assert options.prune_timing == PruneOptions(ratio=0.2, latency_rounds=4)
    assert options.prune.latency_rounds == 0  # the options given are left as they are
    untimed = DeployOptions(batch_sizes=[], prune=PruneOptions(ratio=0.2))
    assert untimed.prune_timing.latency_rounds == 0
    assert DeployOptions().prune_timing is None
    calibrated = PruneOptions(calibration_batches=3)
    assert (
        DeployOptions(verify_data="digits", verify_batch=4, prune=calibrated).calibration_images
        == 12
    )


def test_options_or_fields_not_both(tmp_path) -> None:
    with pytest.raises(TypeError, match="not both"):
        deploy(tmp_path / "x.ckpt", DeployOptions(), out_dir=tmp_path)


def _config(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        return compose("deploy", overrides=["ckpt=a0.ckpt", *overrides])


def test_the_pipeline_fills_the_options_from_the_config(tmp_path) -> None:
    cfg = _config(
        f"out_dir={tmp_path}",
        "latency.batch_sizes=8",
        "verify.data=digits",
        "prune.ratio=0.25",
        "prune.scope=layer",
        "prune.calibration_batches=2",
    )
    options = deploy_options(config_values(cfg))
    assert options == DeployOptions(
        out_dir=tmp_path,
        batch_sizes=(8,),
        verify_data="digits",
        prune=PruneOptions(ratio=0.25, scope="layer", calibration_batches=2),
    )
    assert deploy_options(config_values(_config(f"out_dir={tmp_path}"))).prune is None
    enabled = deploy_options(config_values(_config(f"out_dir={tmp_path}", "prune.enabled=true")))
    assert enabled.prune == PruneOptions(threshold=0.0)


@pytest.mark.parametrize(
    ("override", "error", "message"),
    [
        ("prune.ratio=2", PruningError, r"prune.ratio must lie in \[0, 1\], got 2"),
        ("latency.rounds=0", DeployError, "latency.rounds must be an integer >= 1"),
        ("prune.score=l1", PruningError, "prune.score must be one of l2, l2_next"),
    ],
)
def test_a_bad_config_value_fails_in_the_options(tmp_path, override, error, message) -> None:
    with pytest.raises(error, match=message) as err:
        deploy_options(config_values(_config(f"out_dir={tmp_path}", override)))
    assert isinstance(err.value, InputError)
