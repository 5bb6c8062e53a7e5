"""Compose the real Hydra configs (configs/) for in-process pipeline tests."""

from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import repvgg_lab.pipeline.train  # noqa: F401 - registers the ${if_cuda:...} resolver

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


@pytest.fixture
def compose_train(tmp_path: Path) -> Callable[..., DictConfig]:
    """compose_train(*overrides) -> the train config with output in tmp_path."""

    def _compose(*overrides: str, config_name: str = "train") -> DictConfig:
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            return compose(config_name, overrides=[f"output_dir={tmp_path}", *overrides])

    return _compose
