"""Every option of every config group composes, and instantiates into the real object."""

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from repvgg_lab.lit import ClassifierModule, Reparameterize
from repvgg_lab.models import list_models
from repvgg_lab.pipeline.train import build

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def test_every_registry_model_has_a_config() -> None:
    # Plus tv_ configs: any torchvision classifier, through model.model_name=tv_<name>.
    assert [o for o in options("model") if not o.startswith("tv_")] == list_models()
    assert {o for o in options("model") if o.startswith("tv_")} <= set(list_models(True))


@pytest.mark.parametrize("name", options("model"))
def test_model_configs_instantiate(compose_train, name: str) -> None:
    cfg = compose_train(f"model={name}")
    with torch.device("meta"):  # the big variants would take seconds to initialise for real
        module = instantiate(cfg.model, num_classes=7, in_channels=3)
    assert isinstance(module, ClassifierModule)
    assert module.hparams.model_name == name
    # One logit per class whatever the classifier layer is called: a forward pass on meta
    # tensors (shapes only, no arithmetic) and the last Linear's width.
    logits = module.net.eval()(torch.empty(2, 3, 64, 64, device="meta"))
    assert logits.shape == (2, 7)
    last_linear = [m for m in module.net.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert last_linear.out_features == 7


@pytest.mark.parametrize("group", ["init", "optimizer", "scheduler"])
def test_partial_groups_instantiate_to_callables(compose_train, group: str) -> None:
    for option in options(group):
        fn = instantiate(compose_train(f"{group}={option}")[group])
        assert callable(fn), f"{group}={option}"


def test_optimizer_and_scheduler_build_for_real(compose_train) -> None:
    for opt in options("optimizer"):
        for sched in options("scheduler"):
            cfg = compose_train(f"optimizer={opt}", f"scheduler={sched}")
            params = [torch.nn.Parameter(torch.ones(2, 2))]
            optimizer = instantiate(cfg.optimizer)(params)
            scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=10, steps_per_epoch=5)
            assert isinstance(optimizer, torch.optim.Optimizer)
            assert scheduler.get_last_lr()[0] > 0


def test_data_configs_instantiate(compose_train, tmp_path: Path) -> None:
    for option in options("data"):
        extra = [] if option == "digits" else [f"data.root={tmp_path}"]
        dm = instantiate(compose_train(f"data={option}", *extra).data)
        assert isinstance(dm, pl.LightningDataModule), option


def test_trainer_configs_instantiate(compose_train) -> None:
    for option in options("trainer"):
        cfg = compose_train(f"trainer={option}")
        node = OmegaConf.to_container(cfg.trainer, resolve=True)
        channels_last = node.pop("channels_last")
        if option == "gpu":
            assert node["precision"] == "bf16-mixed" and channels_last is True
        if option == "ddp":
            assert node["strategy"] == "ddp"
            assert node["sync_batchnorm"] is True  # refused on CPU by train.py, not turned off
        if not torch.cuda.is_available() and node["accelerator"] in ("gpu", "cuda", "auto"):
            node["accelerator"] = "cpu"  # the same config on this GPU-less machine
            node["devices"] = 1
            node.pop("benchmark", None)
        if not torch.cuda.is_available() and option == "default":
            assert node["precision"] == "32-true" and channels_last is False
        trainer = instantiate(node, logger=False)
        assert isinstance(trainer, pl.Trainer), option


def test_logger_and_callback_configs_instantiate(compose_train) -> None:
    for option in options("logger"):
        loggers = [
            instantiate(v) for v in (compose_train(f"logger={option}").logger or {}).values()
        ]
        assert all(isinstance(lg, pl.loggers.Logger) for lg in loggers)
        assert (option == "none") == (loggers == [])
    for option in options("callbacks"):
        group = compose_train(f"callbacks={option}").callbacks
        callbacks = [instantiate(v) for v in group.values()]
        assert any(isinstance(c, Reparameterize) for c in callbacks)


@pytest.mark.parametrize("overlay", ["debug", "experiment", "prune", "sweep"])
def test_overlays_compose_and_build(compose_train, overlay: str, tmp_path: Path) -> None:
    for option in options(overlay):
        if overlay == "experiment":
            cfg = compose_train(f"experiment={option}", f"data.root={tmp_path}", "logger=none")
            assert cfg.data._target_.endswith("ImageNetDataModule")
            assert cfg.trainer.max_epochs >= 100
            continue
        cfg = compose_train(f"{overlay}={option}", "logger=none")
        if overlay == "prune":
            assert cfg.prune.enabled == (option != "none")
            assert cfg.model.model_kwargs.get("gate", False) == (option != "none")
        with torch.device("meta"):
            parts = build(cfg)
        assert isinstance(parts["trainer"], pl.Trainer)
        assert isinstance(parts["module"], ClassifierModule)


def test_default_job_is_digits_repvgg_a0_with_offline_wandb(compose_train) -> None:
    cfg = compose_train()
    assert cfg.data._target_.endswith("DigitsDataModule")
    assert cfg.model.model_name == "repvgg_a0"
    assert cfg.logger.wandb.offline is True
    assert cfg.seed == 0
