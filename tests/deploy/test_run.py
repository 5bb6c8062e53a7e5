"""`run.deploy` end to end on cheap nets, and every bad input refused with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from repvgg_lab.data import DigitsDataModule
from repvgg_lab.deploy import DeployError, deploy, steps
from repvgg_lab.errors import InputError
from repvgg_lab.reparam import rel_max
from tests.deploy.conftest import SIZE

FAST = {"batch_sizes": (), "verify_batch": 2}  # no latency rounds in these tests


def test_plain_input_deploys_with_clamp_ops(tmp_path, clamp_net_file) -> None:
    net, path = clamp_net_file(tmp_path, in_channels=1)
    report = deploy(path, out_dir=tmp_path / "out", **FAST)  # input_size from the file: 32
    m = report["metrics"]
    assert report["source"]["deploy_form"] and report["settings"]["input_size"] == 32
    assert "already plain" in report["reference"]
    # No multi-branch source: its comparisons are undefined, not zero.
    assert m["drift/max_abs"] is None and m["params/train"] is None
    assert 0 <= m["drift/vs_fp64/deploy_rel_max"] <= 1e-5
    assert {"Max", "Min", "Clip", "MaxPool"} <= set(report["onnx_ops"])
    assert m["params/deploy"] == sum(p.numel() for p in net.parameters())
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["metrics"] == json.loads(json.dumps(m))
    assert not list((tmp_path / "out").glob(".deploy-*"))  # the staging folder is gone


def test_tolerance_exceeded_writes_nothing(tmp_path, a0, save_lightning, out_dir, unchanged):
    path = save_lightning(a0, tmp_path / "a0.ckpt")
    with pytest.raises(DeployError, match="over tolerance 1e-12.*nothing was written"):
        deploy(path, out_dir=out_dir, tolerance=1e-12, **FAST)
    unchanged()


def test_a_deploy_failing_after_staging_removes_the_out_dir_it_created(
    tmp_path, a0, save_lightning, monkeypatch
) -> None:
    def refuse(*args, **kwargs):
        raise DeployError("refused while the exports were staged")

    monkeypatch.setattr(steps, "measure", refuse)
    path = save_lightning(a0, tmp_path / "a0.ckpt")
    with pytest.raises(DeployError, match="refused while"):
        deploy(path, out_dir=tmp_path / "new" / "out", **FAST)
    assert not (tmp_path / "new").exists()


def _truncated(tmp: Path, a0) -> tuple[Path, dict]:
    torch.save(a0.state_dict(), tmp / "full.pth")
    data = (tmp / "full.pth").read_bytes()
    (tmp / "cut.pth").write_bytes(data[: len(data) // 2])
    return tmp / "cut.pth", {"model": "repvgg_a0"}


def _truncated_safetensors(tmp: Path, a0) -> tuple[Path, dict]:
    from safetensors.torch import save_file

    save_file(a0.state_dict(), str(tmp / "full.safetensors"))
    data = (tmp / "full.safetensors").read_bytes()
    (tmp / "cut.safetensors").write_bytes(data[: len(data) // 3])
    return tmp / "cut.safetensors", {"model": "repvgg_a0"}


def _text(tmp: Path, a0) -> tuple[Path, dict]:
    (tmp / "notes.ckpt").write_text("epoch 3: val/acc 0.91\n")
    return tmp / "notes.ckpt", {}


def _empty(tmp: Path, a0) -> tuple[Path, dict]:
    (tmp / "empty.pth").write_bytes(b"")
    return tmp / "empty.pth", {}


def _no_tensors(tmp: Path, a0) -> tuple[Path, dict]:
    torch.save({"epoch": 3, "best": 0.91}, tmp / "meta.pth")
    return tmp / "meta.pth", {}


def _other_architecture(tmp: Path, a0) -> tuple[Path, dict]:
    torch.save(a0.state_dict(), tmp / "a0.pth")
    return tmp / "a0.pth", {"model": "repvgg_a1"}


def _lightning_other_architecture(tmp: Path, a0) -> tuple[Path, dict]:
    state = {f"net.{k}": v for k, v in a0.state_dict().items()}
    hparams = {"model_name": "repvgg_b0", "num_classes": 10}
    torch.save({"state_dict": state, "hyper_parameters": hparams}, tmp / "b0.ckpt")
    return tmp / "b0.ckpt", {}


def _foreign_without_model(tmp: Path, a0) -> tuple[Path, dict]:
    torch.save(a0.state_dict(), tmp / "a0.pth")
    return tmp / "a0.pth", {}


def _unknown_model(tmp: Path, a0) -> tuple[Path, dict]:
    torch.save(a0.state_dict(), tmp / "a0.pth")
    return tmp / "a0.pth", {"model": "repvgg_z9"}


def _folder(tmp: Path, a0) -> tuple[Path, dict]:
    (tmp / "run").mkdir()
    return tmp / "run", {}


def _out_dir_is_a_file(tmp: Path, a0) -> tuple[Path, dict]:
    torch.save(a0.state_dict(), tmp / "a0.pth")
    (tmp / "taken").write_text("a file where the output folder should go")
    return tmp / "a0.pth", {"model": "repvgg_a0", "out_dir": tmp / "taken" / "sub"}


def _bad_option(option: str, value: object):
    def make(tmp: Path, a0) -> tuple[Path, dict]:
        torch.save(a0.state_dict(), tmp / "a0.pth")
        return tmp / "a0.pth", {"model": "repvgg_a0", option: value}

    return make


BAD_INPUTS = {
    "truncated": (_truncated, "not a readable PyTorch checkpoint"),
    "truncated safetensors": (_truncated_safetensors, "not a readable safetensors"),
    "text file": (_text, "is not a checkpoint"),
    "empty file": (_empty, "empty file"),
    "no tensors": (_no_tensors, "no tensors"),
    "other architecture": (_other_architecture, "is not a repvgg_a1 checkpoint.*shape mismatch"),
    "lightning other architecture": (_lightning_other_architecture, "not a repvgg_b0 checkpoint"),
    "foreign without model": (_foreign_without_model, "does not say which architecture"),
    "unknown model": (_unknown_model, "unknown model 'repvgg_z9'"),
    "folder": (_folder, "directory"),
    "out_dir under a file": (_out_dir_is_a_file, "cannot write to out_dir"),
    "input_size": (_bad_option("input_size", 0), "input_size must be an integer >= 1"),
    "tolerance": (_bad_option("tolerance", -1.0), "tolerance must be a positive number"),
    "opset": (_bad_option("opset", 21), "export.opset must be an integer from 11 to 20"),
    "batch sizes": (_bad_option("batch_sizes", [1, 0]), "latency.batch_sizes"),
    "verify data": (_bad_option("verify_data", "cifar"), "verify.data"),
    "imagenet root": (_bad_option("verify_data", "imagenet"), "verify.root"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_writes_nothing(case, tmp_path, a0, out_dir, unchanged):
    make, message = BAD_INPUTS[case]
    path, kwargs = make(tmp_path, a0)
    with pytest.raises(InputError, match=message) as err:
        deploy(path, **{"out_dir": out_dir, "input_size": 32, **FAST, **kwargs})
    assert "\n" not in str(err.value)
    unchanged()


def test_real_images_digits(tmp_path, clamp_net_file) -> None:
    net, path = clamp_net_file(tmp_path, in_channels=1)
    report = deploy(path, out_dir=tmp_path / "out", verify_data="digits", verify_size=40, **FAST)
    m = report["metrics"]
    assert m["verify/images"] == 40
    assert m["verify/top1_agree/deploy"] == m["verify/top1_agree/onnx"] == 1.0
    assert m["verify/acc/deploy"] == m["verify/acc/onnx"]
    # The source net's accuracy on the same 40 validation images, recomputed here.
    dm = DigitsDataModule(img_size=SIZE, in_channels=1)
    images, labels = dm.fixed_batch("val", 40)
    with torch.no_grad():
        correct = net.eval()(images).argmax(dim=1) == labels
    assert m["verify/acc/deploy"] == pytest.approx(float(correct.double().mean()))
    assert "verify/acc/train" not in m  # a plain input has no multi-branch net to evaluate


def _image_folder(root: Path) -> Path:
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                pixels = torch.randint(0, 256, (40, 48, 3), generator=gen, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(root / split / cls / f"{i}.png")
    return root


@pytest.mark.slow  # builds an image folder and runs timm's transforms
def test_real_images_imagenet_folder(tmp_path, clamp_net_file) -> None:
    _, path = clamp_net_file(tmp_path, in_channels=3)
    root = _image_folder(tmp_path / "images")
    report = deploy(
        path, out_dir=tmp_path / "out", verify_data="imagenet", verify_root=str(root), **FAST
    )
    assert report["metrics"]["verify/images"] == 6
    assert report["metrics"]["verify/top1_agree/onnx"] == 1.0


def test_missing_imagenet_root_is_one_line(tmp_path, clamp_net_file, out_dir, unchanged):
    _, path = clamp_net_file(tmp_path, in_channels=3)
    with pytest.raises(DeployError, match="verify.data=imagenet.*nowhere"):
        deploy(path, out_dir=out_dir, verify_data="imagenet", verify_root="/nowhere", **FAST)
    unchanged()


def test_torchvision_resnet50_deploys_without_add_nodes(tmp_path) -> None:
    """deploy.py ckpt=resnet50.pth model=rmnet_resnet50: a plain ONNX graph matching the source."""
    import onnx
    import onnxruntime as ort
    import torchvision

    from repvgg_lab.testing import randomize_bn

    source = randomize_bn(torchvision.models.resnet50(num_classes=10), seed=3).eval()
    torch.save(source.state_dict(), tmp_path / "resnet50_torchvision.pth")
    out = tmp_path / "out"
    report = deploy(
        tmp_path / "resnet50_torchvision.pth",
        model="rmnet_resnet50",
        out_dir=out,
        input_size=32,
        batch_sizes=[],
    )
    ops = {node.op_type for node in onnx.load(out / "model.onnx").graph.node}
    assert "Add" not in ops and "BatchNormalization" not in ops and "Conv" in ops
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        truth = source.double()(x.double())
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert rel_max(truth, torch.from_numpy(y)) < 1e-4
    assert report["metrics"]["drift/top1_agree"] == 1.0
