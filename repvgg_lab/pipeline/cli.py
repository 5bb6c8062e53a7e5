"""The entry points' front door: the command line's overrides are composed and checked before
Hydra runs the job, so a config mistake gets one line naming the key and what is allowed, and
exit status 2, instead of Hydra's multi-line report or a traceback from deep inside training."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf

from repvgg_lab.errors import ConfigError, is_integer
from repvgg_lab.models.registry import resolve as resolve_model
from repvgg_lab.pipeline.common import user_errors
from repvgg_lab.pipeline.run_folder import removed_if_refused

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# Flags that ask Hydra for something other than a run (help, printing the config, other
# config folders): those command lines go to Hydra unchecked.
_RUN_FLAGS = {"-m", "--multirun"}


# (kind, lower bound) of values users set often and that otherwise fail late or obscurely.
Check = tuple[str, float | None]
TRAIN_CHECKS: dict[str, Check] = {
    "seed": ("int?", None),
    "trainer.max_epochs": ("int", 1),
    "data.batch_size": ("int", 1),
    "data.img_size": ("int", 8),
    "data.num_workers": ("int", 0),
    "optimizer.lr": ("number", 0),
    "finetune.epochs": ("int", 0),
    "finetune.lr": ("number", 0),
}
DEPLOY_CHECKS: dict[str, Check] = {"seed": ("int?", None)}


def _first_values(overrides: Sequence[str]) -> list[str]:
    """The overrides with each multirun sweep (`seed=1,2`) reduced to its first value."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    out = []
    for text, override in zip(overrides, parsed, strict=True):
        if override.is_sweep_override():
            value = next(iter(override.sweep_string_iterator()))
            out.append(f"{override.get_key_element()}={value}")
        else:
            out.append(text)
    return out


def _composition_error(err: HydraException) -> ConfigError:
    """Hydra's composition errors, each said in one line."""
    if isinstance(err, MissingConfigException) and err.options:
        group = (err.missing_cfg_file or "").rpartition("/")[0] or "option"
        name = (err.missing_cfg_file or "").rpartition("/")[2]
        return ConfigError(
            f"{group}={name} is not an option; choose one of {', '.join(err.options)}"
        )
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if first.startswith("Could not override '"):
        key = first.split("'")[1]
        return ConfigError(f"unknown config key {key!r} (check the spelling; +{key}=... adds one)")
    if isinstance(err, OverrideParseException):
        return ConfigError(f"cannot parse the command line's overrides: {first}")
    return ConfigError(first)


def _missing(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys left at `???` (mandatory, no value), outside Hydra's own section."""
    keys = []
    for key in node:
        full = f"{prefix}{key}"
        if full == "hydra" or OmegaConf.is_interpolation(node, key):
            continue
        if OmegaConf.is_missing(node, key):
            keys.append(full)
        elif isinstance(node[key], DictConfig):
            keys.extend(_missing(node[key], full + "."))
    return keys


def _check_value(key: str, value: Any, check: Check) -> None:
    kind, low = check
    if value is None and kind.endswith("?"):
        return
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind.startswith("int") and not is_integer(value):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if not number:
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if low is not None and (value < low if kind.startswith("int") else value <= low):
        relation = ">=" if kind.startswith("int") else ">"
        raise ConfigError(f"{key} must be {relation} {low:g}, got {value!r}")


def _check_model(cfg: DictConfig) -> None:
    """`model.model_name` must name a registry model (`tv_<torchvision classifier>` included)
    and `model.model_kwargs` hold values its config accepts (e.g. tv_*'s `branches`)."""
    name = OmegaConf.select(cfg, "model.model_name", default=None)
    if not isinstance(name, str):
        return
    kwargs = OmegaConf.select(cfg, "model.model_kwargs", default=None)
    kwargs = OmegaConf.to_container(kwargs, resolve=True) if isinstance(kwargs, DictConfig) else {}
    resolve_model(name, **kwargs)


def check_config(cfg: DictConfig, checks: Mapping[str, Check], command: str = "train") -> None:
    """Refuse missing mandatory values, values of the wrong kind or range (ConfigError) and
    unknown models or model options."""
    missing = _missing(cfg)
    if missing:
        key = missing[0]
        raise ConfigError(f"missing required option {key}= (e.g. python {command}.py {key}=...)")
    for key, check in checks.items():
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if OmegaConf.select(cfg, key, default="<absent>") != "<absent>":
            _check_value(key, value, check)
    _check_model(cfg)


def compose_checked(config: str, argv: Sequence[str], checks: Mapping[str, Check]) -> DictConfig:
    """Compose `configs/<config>.yaml` with the command line's overrides and check it."""
    folder = CONFIGS if config == "train" else CONFIGS / config
    try:
        overrides = _first_values([a for a in argv if not a.startswith("-")])
        with initialize_config_dir(str(folder), version_base="1.3"):
            cfg = compose(config, overrides=overrides)
    except HydraException as err:
        raise _composition_error(err) from None
    check_config(cfg, checks, config)
    return cfg


def run(config: str, task: Callable[[DictConfig], Any], checks: Mapping[str, Check]) -> None:
    """Check the command line, then hand it to Hydra, which runs `task` (once or per sweep)."""
    argv = sys.argv[1:]
    if all(a in _RUN_FLAGS or not a.startswith("-") for a in argv):
        with user_errors():
            compose_checked(config, argv, checks)
    folder = CONFIGS if config == "train" else CONFIGS / config
    with removed_if_refused():  # a refused job leaves no run folder (configs' hydra.callbacks)
        hydra.main(version_base="1.3", config_path=str(folder), config_name=config)(task)()
