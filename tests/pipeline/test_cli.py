"""Config mistakes on the command line: one line naming the key and what is allowed, exit 2,
before any training or conversion starts."""

from __future__ import annotations

import pytest

from repvgg_lab.errors import ConfigError, UnknownModelError
from repvgg_lab.pipeline.cli import DEPLOY_CHECKS, TRAIN_CHECKS, compose_checked
from tests.helpers.cli import run_script

MISTAKES = {
    "unknown key": (["no_such_key=1"], "unknown config key 'no_such_key'"),
    "unknown nested key": (["trainer.max_epoch=3"], "unknown config key 'trainer.max_epoch'"),
    "unknown group option": (["model=no_such_model"], "model=no_such_model is not an option"),
    "missing required value": (["data=imagenet"], "missing required option data.root="),
    "wrong type": (["trainer.max_epochs=abc"], "trainer.max_epochs must be an integer, got 'abc'"),
    "float for an int": (["seed=1.5"], "seed must be an integer, got 1.5"),
    "out of range": (["data.batch_size=0"], "data.batch_size must be >= 1, got 0"),
    "not positive": (["optimizer.lr=0"], "optimizer.lr must be > 0, got 0"),
    "bad syntax": (["seed=[1,2"], "cannot parse the command line's overrides"),
    "mistake inside a sweep": (["seed=1,2", "nope=3"], "unknown config key 'nope'"),
    "bad model option": (
        ["model=tv_resnet18", "model.model_kwargs.branches=bogus"],
        "branches must be one of none, repvgg, acb, dbb, got 'bogus'",
    ),
}


@pytest.mark.parametrize(("argv", "message"), MISTAKES.values(), ids=MISTAKES)
def test_train_config_mistakes_are_named(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        compose_checked("train", argv, TRAIN_CHECKS)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_group_option_error_lists_the_allowed_options() -> None:
    with pytest.raises(ConfigError, match="choose one of .*repvgg_a0.*rmnet_resnet50"):
        compose_checked("train", ["model=repvgg_z9"], TRAIN_CHECKS)


def test_unknown_model_names_are_named_before_the_run() -> None:
    for argv, shown in (
        (["model.model_name=repvgg_z9"], "tv_<any torchvision classifier>"),
        (["model=tv_resnet18", "model.model_name=tv_nope"], "tv_resnet18"),
    ):
        with pytest.raises(UnknownModelError) as info:
            compose_checked("train", argv, TRAIN_CHECKS)
        assert shown in str(info.value) and "\n" not in str(info.value)


def test_any_torchvision_classifier_composes_through_the_tv_config() -> None:
    argv = ["model=tv_resnet18", "model.model_name=tv_vgg11_bn", "model.model_kwargs.branches=acb"]
    cfg = compose_checked("train", argv, TRAIN_CHECKS)
    assert cfg.model.model_name == "tv_vgg11_bn" and cfg.model.model_kwargs.branches == "acb"


def test_good_command_lines_compose() -> None:
    cfg = compose_checked("train", ["-m", "seed=1,2", "trainer.max_epochs=3"], TRAIN_CHECKS)
    assert cfg.seed == 1 and cfg.trainer.max_epochs == 3
    assert compose_checked("train", ["seed=null"], TRAIN_CHECKS).seed is None
    cfg = compose_checked("deploy", ["ckpt=x.ckpt", "seed=3"], DEPLOY_CHECKS)
    assert cfg.ckpt == "x.ckpt"


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("train.py", ["model=no_such_model"], "model=no_such_model is not an option"),
        ("train.py", ["-m", "seed=1,2", "no_such_key=1"], "unknown config key 'no_such_key'"),
        ("deploy.py", ["ckpt=x", "nope=1"], "unknown config key 'nope'"),
        (
            "train.py",
            ["model=tv_resnet18", "model.model_kwargs.branches=bogus"],
            "branches must be one of none, repvgg, acb, dbb, got 'bogus'",
        ),
    ],
)
def test_entry_points_print_one_line_and_exit_2(script: str, argv: list[str], message: str):
    result = run_script(script, *argv, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
