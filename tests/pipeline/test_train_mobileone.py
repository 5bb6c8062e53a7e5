"""MobileOne trains and deploys like the RepVGG family: a real (short) Lightning job, conversion
at the end, then `deploy` on its checkpoint with ONNX Runtime checking the plain export."""

import json
from pathlib import Path

import onnx
import torch

from repvgg_lab.deploy import deploy
from repvgg_lab.models import create_model, load_pretrained, read_checkpoint, reparameterize
from repvgg_lab.models.mobileone import MobileOneBlock
from repvgg_lab.pipeline.train import train

from .test_train import SMALL


def test_mobileone_s0_trains_converts_and_deploys(compose_train, tmp_path: Path) -> None:
    train(compose_train("model=mobileone_s0", *SMALL, "logger=none"))
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["drift/top1_agree"] == 1.0
    assert on_disk["drift/vs_fp64/deploy_rel_max"] <= max(
        3 * on_disk["drift/vs_fp64/train_rel_max"], 1e-5
    )
    assert on_disk["params/deploy"] < on_disk["params/train"]
    ckpt_path = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = read_checkpoint(ckpt_path)
    assert ckpt.model_name == "mobileone_s0"
    source = load_pretrained(create_model("mobileone_s0", num_classes=10), ckpt.state_dict).eval()
    blocks = [m for m in source.modules() if isinstance(m, MobileOneBlock)]
    assert any(len(b.conv_kxk) == 4 for b in blocks)  # S0's over-parameterized stages
    plain = load_pretrained(
        create_model("mobileone_s0", num_classes=10, deploy=True), tmp_path / "plain.safetensors"
    ).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(plain(x), reparameterize(source)(x))
    out = tmp_path / "deployed"
    report = deploy(
        ckpt_path, out_dir=out, verify_data="digits", verify_size=8, batch_sizes=(), verify_batch=4
    )
    assert report["metrics"]["verify/top1_agree/onnx"] == 1.0
    graph = onnx.load(str(out / "model.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert "Conv" in ops and not ops & {"Add", "BatchNormalization"}
    assert sum(n.op_type == "Conv" for n in graph.node) == sum(
        isinstance(m, torch.nn.Conv2d) for m in plain.modules()
    )
