"""Every checkpoint format loads into the right architecture with the right weights."""

from __future__ import annotations

import copy

import pytest
import torch

from repvgg_lab.deploy import DeployError, load_source
from repvgg_lab.models import reparameterize
from repvgg_lab.models.plain import PlainNet

SIZE = 32


def _x(channels: int = 3, batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, channels, SIZE, SIZE, generator=torch.Generator().manual_seed(7))


@torch.no_grad()
def _same(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor, rel: float = 0.0) -> bool:
    ya, yb = a.eval()(x), b.eval()(x)
    return bool((ya - yb).abs().max() <= rel * ya.abs().max())


def test_lightning_checkpoint_names_its_architecture(tmp_path, make_net, save_lightning) -> None:
    net = make_net("repvgg_a0", in_channels=1, se=True)
    path = save_lightning(net, tmp_path / "last.ckpt", in_channels=1, model_kwargs={"se": True})
    # Lightning also stores the module's other tensors (e.g. a loss weight) beside `net.`.
    raw = torch.load(path, weights_only=True)
    raw["state_dict"]["criterion.weight"] = torch.ones(10)
    torch.save(raw, path)

    src = load_source(path)
    assert (src.model_name, src.num_classes, src.in_channels) == ("repvgg_a0", 10, 1)
    assert src.format == "lightning" and not src.deploy_form and src.input_size == SIZE
    assert src.model_kwargs["se"] is True
    assert _same(net, src.trained, _x(1))
    assert _same(net, src.plain, _x(1), rel=1e-5)


@pytest.mark.slow  # importing Lightning alone takes several seconds
def test_real_lightning_module_checkpoint(tmp_path) -> None:
    import pytorch_lightning as pl

    from repvgg_lab.lit.module import ClassifierModule

    module = ClassifierModule("repvgg_a0", num_classes=10, in_channels=3, input_size=SIZE)
    # What Trainer.save_checkpoint stores for the weights and hyper-parameters.
    ckpt = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": pl.__version__,
    }
    torch.save(ckpt, tmp_path / "real.ckpt")
    src = load_source(tmp_path / "real.ckpt")
    assert src.model_name == "repvgg_a0" and src.num_classes == 10
    assert _same(module.net, src.trained, _x())


def test_official_train_form_needs_model_and_infers_classes(tmp_path, a0, to_official) -> None:
    state = {f"module.{k}": v for k, v in to_official(a0.state_dict()).items()}  # DDP prefix
    path = tmp_path / "RepVGG-A0-train.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(DeployError, match="model="):
        load_source(path)
    src = load_source(path, model="repvgg_a0")
    assert src.format == "official" and src.num_classes == 10
    assert _same(a0, src.trained, _x())


def test_official_deploy_form_is_already_plain(tmp_path, a0, to_official) -> None:
    plain = reparameterize(a0)
    path = tmp_path / "RepVGG-A0-deploy.pth"
    torch.save(to_official(plain.state_dict()), path)
    src = load_source(path, model="repvgg_a0")
    assert src.deploy_form and src.trained is None and src.num_classes == 10
    assert _same(plain, src.plain, _x())


def test_timm_weights_match_timm_outputs(tmp_path) -> None:
    import timm

    from repvgg_lab.testing import randomize_bn

    oracle = randomize_bn(timm.create_model("repvgg_a0", num_classes=10), seed=3).eval()
    torch.save(oracle.state_dict(), tmp_path / "timm_a0.pth")
    src = load_source(tmp_path / "timm_a0.pth", model="repvgg_a0")
    assert src.num_classes == 10
    assert _same(oracle, src.trained, _x(), rel=1e-5)
    assert _same(oracle, src.plain, _x(), rel=1e-5)


RMNET = [("rmnet_resnet18", "resnet18"), ("rmnet_mobilenet_v2", "mobilenet_v2")]


@pytest.mark.parametrize(("name", "tv_name"), RMNET)
def test_torchvision_weights_into_rmnet(tmp_path, name, tv_name) -> None:
    import torchvision

    from repvgg_lab.testing import randomize_bn

    oracle = randomize_bn(getattr(torchvision.models, tv_name)(num_classes=10), seed=1).eval()
    torch.save(oracle.state_dict(), tmp_path / f"{tv_name}.pth")
    src = load_source(tmp_path / f"{tv_name}.pth", model=name)
    assert src.num_classes == 10 and not src.deploy_form
    x = _x()
    with torch.no_grad():
        truth = copy.deepcopy(oracle).double()(x.double())
        assert (src.plain(x).double() - truth).abs().max() <= 1e-4 * truth.abs().max()


def test_plain_net_layout_travels_in_safetensors(tmp_path, clamp_net_file) -> None:
    net, path = clamp_net_file(tmp_path, in_channels=1)
    src = load_source(path)
    assert isinstance(src.plain, PlainNet) and src.deploy_form
    assert (src.model_name, src.num_classes, src.in_channels) == ("rmnet_custom", 10, 1)
    assert _same(net, src.plain, _x(1))


def test_model_that_contradicts_the_file_is_refused(tmp_path, a0, save_lightning) -> None:
    path = save_lightning(a0, tmp_path / "a0.ckpt")
    with pytest.raises(DeployError, match="holds a repvgg_a0 checkpoint but model=repvgg_b0"):
        load_source(path, model="repvgg_b0")


def test_a_checkpoint_with_an_ema_deploys_the_ema_weights(tmp_path) -> None:
    from repvgg_lab.testing import trained_like

    trained = trained_like("repvgg_a0", 0, num_classes=10)
    average = trained_like("repvgg_a0", 1, num_classes=10)
    state = {"net." + k: v for k, v in trained.state_dict().items()}
    hparams = {"model_name": "repvgg_a0", "num_classes": 10}
    path = tmp_path / "ema.ckpt"
    torch.save(
        {
            "state_dict": state,
            "hyper_parameters": hparams,
            "pytorch-lightning_version": "2.6",
            "ema_state_dict": average.state_dict(),
        },
        path,
    )
    src = load_source(path)
    assert src.weights == "ema"
    assert _same(average, src.trained, _x()) and not _same(trained, src.trained, _x())
    torch.save({"state_dict": state, "hyper_parameters": hparams}, tmp_path / "raw.ckpt")
    assert load_source(tmp_path / "raw.ckpt").weights == "trained"
