"""A real (short) Lightning job with model=qarepvgg_a0: it trains, converts and logs drift."""

import json
from pathlib import Path

import torch

from repvgg_lab.models import (
    QARepVGGBlock,
    create_model,
    load_pretrained,
    read_checkpoint,
    reparameterize,
)
from repvgg_lab.pipeline.train import train
from tests.helpers.contract import DRIFT_METRICS

from .test_train import SMALL


def test_qarepvgg_a0_trains_converts_and_writes_drift(compose_train, tmp_path: Path) -> None:
    metrics = train(compose_train("model=qarepvgg_a0", *SMALL, "logger=none"))
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert all(key in on_disk for key in DRIFT_METRICS)
    assert on_disk["drift/top1_agree"] == 1.0 and metrics["drift/top1_agree"] == 1.0
    assert on_disk["drift/vs_fp64/deploy_rel_max"] <= max(
        3 * on_disk["drift/vs_fp64/train_rel_max"], 1e-5
    )
    assert on_disk["params/deploy"] < on_disk["params/train"]
    # The run's own files: the Lightning checkpoint and the plain weights load back.
    ckpt = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt.model_name == "qarepvgg_a0"
    source = load_pretrained(create_model("qarepvgg_a0", num_classes=10), ckpt.state_dict).eval()
    assert isinstance(source.stem, QARepVGGBlock) and source.stem.bn.num_batches_tracked > 0
    plain = load_pretrained(
        create_model("qarepvgg_a0", num_classes=10, deploy=True), tmp_path / "plain.safetensors"
    ).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(plain(x), reparameterize(source)(x))
