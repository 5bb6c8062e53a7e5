"""Pruning through the pipelines: `train.py prune=gates` (prune after conversion, then fine-tune)
and `deploy.py prune.*` (prune the verified plain net, then export), on tiny real runs."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from repvgg_lab.deploy import load_source
from repvgg_lab.lit.evaluate import evaluate
from repvgg_lab.models import create_model, read_checkpoint, save_weights
from repvgg_lab.models.plain import PlainNet
from repvgg_lab.pipeline.deploy import deploy
from repvgg_lab.pipeline.prune import prune_options
from repvgg_lab.pipeline.train import train
from repvgg_lab.prune import PruneOptions, prune_and_measure
from repvgg_lab.reparam import rel_max
from repvgg_lab.testing import randomize_bn
from repvgg_lab.utils import count_macs

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = [
    "prune=gates",
    "logger=none",
    "data.img_size=16",
    "data.batch_size=32",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
    "callbacks.progress_bar=null",
    "finetune.epochs=1",
    "prune.latency_rounds=2",
]
COUNTS = ["prune/params_before", "prune/params_after", "prune/macs_before", "prune/macs_after"]
LATENCY = ["prune/latency_before_ms", "prune/latency_after_ms", "prune/speedup"]


def compose_config(config_dir: Path, name: str, overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir)):
        return compose(name, overrides=overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict, object]:
    """One tiny `train.py prune=gates` job: (run folder, metrics.json, its config)."""
    run = tmp_path_factory.mktemp("train")
    cfg = compose_config(CONFIGS, "train", [f"output_dir={run}", *TINY])
    returned = train(cfg)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == pytest.approx(returned)
    return run, metrics, cfg


def _digits(size: int):
    from repvgg_lab.data import DigitsDataModule

    dm = DigitsDataModule(img_size=size, batch_size=32)  # the batches of TINY
    dm.setup()
    return dm


def test_train_prunes_after_conversion_and_fine_tunes(trained) -> None:
    run, m, cfg = trained
    for key in [*COUNTS, *LATENCY, "prune/val/acc", "prune/test/acc", "prune/exact"]:
        assert key in m, key
    for key in ("finetune/val/acc", "finetune/test/acc", "finetune/train/loss"):
        assert key in m, key
    # prune=gates fine-tunes with distillation from the unpruned plain net.
    assert cfg.finetune.distill == 0.5 and m["finetune/train/distill"] > 0
    # prune=gates asks for the least pruning that removes 30 % of the MACs.
    assert m["prune/macs_after"] <= 0.7 * m["prune/macs_before"]
    assert m["prune/macs_before"] == m["macs/deploy"]
    assert m["prune/params_after"] < m["prune/params_before"]
    assert m["prune/latency_before_ms"] > 0 and m["prune/latency_after_ms"] > 0
    assert m["train/sparsity_penalty"] > 0  # the gates were trained with the L1 penalty

    # pruned.safetensors rebuilds from its stored layout and is the net that was evaluated...
    ckpt = read_checkpoint(run / "pruned.safetensors")
    spec = ckpt.hyper_parameters["plain_spec"]
    pruned = PlainNet.from_spec(spec)
    pruned.load_state_dict(ckpt.state_dict)
    pruned.eval()
    dm = _digits(16)
    # On the test batches every other net is measured on (limit_test_batches).
    assert evaluate(pruned, itertools.islice(dm.test_dataloader(), 2))["acc"] == m["prune/test/acc"]
    assert count_macs(pruned, 16, 3) == m["prune/macs_after"]
    # ... and the pruning of the saved plain net with the run's options (deploy's loader).
    # prune=gates recalibrates the pruned net on fixed training images.
    assert cfg.prune.calibration_batches > 0 and m["prune/recalibrated"] == 1.0
    batch = cfg.data.batch_size
    images, _ = dm.fixed_batch("train", cfg.prune.calibration_batches * batch)
    plain = load_source(run / "plain.safetensors").plain
    again = prune_and_measure(plain, prune_options(cfg.prune), 16, images.split(batch)).net
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), pruned(x))

    # The fine-tuned net keeps the pruned layout, and is what finetune/test/acc measured.
    tuned = load_source(run / "plain_finetuned.safetensors").plain
    assert tuned.spec() == spec
    acc = evaluate(tuned, itertools.islice(dm.test_dataloader(), 2))["acc"]  # limit_test_batches
    assert acc == pytest.approx(m["finetune/test/acc"], abs=1e-6)
    with torch.no_grad():
        assert not torch.equal(tuned(x), pruned(x))  # fine-tuning changed the weights


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("prune.ratio=0.2", ["prune.ratio", "prune.macs_reduction"]),  # two criteria
        ("finetune.distill=2", ["finetune.distill"]),
        ("finetune.temperature=0", ["finetune.temperature"]),
    ],
)
def test_bad_prune_or_finetune_option_fails_before_training(
    tmp_path, capsys, override, named
) -> None:
    cfg = compose_config(CONFIGS, "train", [f"output_dir={tmp_path}", *TINY, override])
    with pytest.raises(SystemExit) as exit_info:
        train(cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(name in err[0] for name in named)
    assert not (tmp_path / "checkpoints").exists()  # refused before any training


def test_deploy_prune_node_has_the_train_keys() -> None:
    train_keys = set(yaml.safe_load((CONFIGS / "prune" / "none.yaml").read_text())["prune"])
    deploy_keys = set(yaml.safe_load((CONFIGS / "deploy" / "deploy.yaml").read_text())["prune"])
    assert deploy_keys == train_keys - {"sparsity", "latency_rounds"}


def _deploy(ckpt: Path, out: Path, *overrides: str) -> dict:
    cfg = compose_config(
        CONFIGS / "deploy",
        "deploy",
        [
            f"ckpt={ckpt}",
            f"out_dir={out}",
            "latency.batch_sizes=[1]",
            "latency.rounds=2",
            "latency.warmup=0",
            "verify.batch=2",
            *overrides,
        ],
    )
    assert OmegaConf.select(cfg, "prune.enabled") is False
    deploy(cfg)
    return json.loads((out / "report.json").read_text())


def _onnx_conv_channels(path: Path) -> int:
    """Output channels of all Conv nodes of an exported graph (their weights' first dim)."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    return sum(inits[n.input[1]].dims[0] for n in model.graph.node if n.op_type == "Conv")


def _run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def test_deploy_exact_pruning_at_threshold_zero(tmp_path) -> None:
    torch.manual_seed(0)
    net = randomize_bn(create_model("repvgg_a0", num_classes=10, gate=True), seed=0).eval()
    gates = [b.gate for b in [net.stem, *(b for s in net.stages for b in s)]]
    dead = 0
    with torch.no_grad():
        for i, g in enumerate(gates):  # a zero gate makes its channel dead (act(0) = 0)
            g[i % 3 :: 5] = 0.0
            dead += int((g == 0).sum())
    meta = {"model_name": "repvgg_a0", "num_classes": 10, "input_size": 32}
    meta["model_kwargs"] = {"gate": True}
    ckpt = save_weights(net, tmp_path / "gated.safetensors", meta)
    out = tmp_path / "out"
    report = _deploy(ckpt, out, "prune.threshold=0")
    m = report["metrics"]
    assert m["prune/exact"] == 1.0 and report["prune"]["exact"] is True
    assert m["prune/rel_max"] <= report["settings"]["tolerance"]
    assert m["prune/top1_agree"] == 1.0
    assert (
        m["prune/macs_after"] < m["prune/macs_before"] and m["macs/deploy"] == m["prune/macs_after"]
    )
    # Exactly the dead channels are gone from the exported graph (no carriers: they are zeros).
    before = sum(g.numel() for g in gates)
    assert _onnx_conv_channels(out / "model.onnx") == before - dead
    # The exported graph still computes the source's function, at another input size too.
    x = torch.randn(3, 3, 40, 40)
    with torch.no_grad():
        truth = net.double()(x.double())
    assert rel_max(truth, _run_onnx(out / "model.onnx", x)) <= 1e-5


def test_deploy_lossy_pruning_of_a_trained_checkpoint(trained, tmp_path) -> None:
    run, _, _ = trained
    out = tmp_path / "out"
    report = _deploy(run / "checkpoints" / "last.ckpt", out, "prune.macs_reduction=0.3")
    m = report["metrics"]
    assert all(k in m for k in [*COUNTS, *LATENCY, "prune/rel_max", "prune/top1_agree"])
    assert m["prune/exact"] == 0.0
    assert m["prune/macs_after"] <= 0.7 * m["prune/macs_before"]
    assert m["prune/params_after"] == m["params/deploy"] < m["prune/params_before"]
    # The conversion itself was verified and stays exact; the exports are the pruned net.
    assert m["drift/vs_fp64/deploy_rel_max"] <= report["settings"]["tolerance"]
    assert "pruned net in float64" in report["reference"]
    assert json.loads((out / "metrics.json").read_text()) == m
    pruned = load_source(out / "model.safetensors").plain
    unpruned = load_source(run / "plain.safetensors").plain
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        y, y_unpruned = pruned(x), unpruned(x)
    assert rel_max(y, _run_onnx(out / "model.onnx", x)) <= 1e-5
    assert rel_max(y_unpruned, y) > 1e-3  # lossy indeed: the pruned net is another function
    assert count_macs(pruned, 16, 3) == m["prune/macs_after"]


def test_deploy_recalibrates_pruning_on_the_verification_images(trained, tmp_path) -> None:
    from repvgg_lab.deploy.verify import real_loaders

    run, _, _ = trained
    out = tmp_path / "out"
    options = ["prune.macs_reduction=0.3", "prune.score=l2_next", "prune.normalize=true"]
    calibrated = [*options, "prune.calibration_batches=3", "verify.data=digits", "verify.size=10"]
    m = _deploy(run / "checkpoints" / "last.ckpt", out, *calibrated)["metrics"]
    assert m["prune/macs_after"] <= 0.7 * m["prune/macs_before"] and m["prune/exact"] == 0.0
    assert m["prune/recalibrated"] == 1.0
    # The same as pruning the saved plain net, recalibrated on 3 batches of 2 training images
    # (the validation images stay unseen for verify/acc).
    loader = real_loaders("digits", None, 16, 3, {"train": ("train", 6)}, batch=2)["train"]
    plain = load_source(run / "plain.safetensors").plain
    options = PruneOptions(
        macs_reduction=0.3, score="l2_next", normalize=True, calibration_batches=3
    )
    expected = prune_and_measure(plain, options, 16, loader).net
    exported = load_source(out / "model.safetensors").plain
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(exported(x), expected.eval()(x))


def test_deploy_calibration_without_images_is_refused(trained, tmp_path, capsys) -> None:
    run, _, _ = trained
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        _deploy(
            run / "checkpoints" / "last.ckpt", out, "prune.ratio=0.2", "prune.calibration_batches=2"
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "verify.data" in err[0]
    assert not out.exists()


def test_train_and_deploy_prune_alike(trained, tmp_path) -> None:
    """deploy.py given the training run's prune node, its unpruned plain net and the same
    calibration images (verify.batch = data.batch_size) exports train.py's pruned net: both
    prune through prune_and_measure."""
    run, _, cfg = trained
    node = OmegaConf.to_container(cfg.prune)
    prune = [
        f"prune.{k}={'null' if v is None else str(v).lower()}"
        for k, v in node.items()
        if k not in ("sparsity", "latency_rounds")
    ]
    out = tmp_path / "out"
    overrides = [
        f"ckpt={run / 'plain.safetensors'}",
        f"out_dir={out}",
        "latency.batch_sizes=[]",
        f"verify.batch={cfg.data.batch_size}",
        "verify.data=digits",
        "verify.size=8",
        *prune,
    ]
    m = deploy(compose_config(CONFIGS / "deploy", "deploy", overrides))
    assert m["prune/recalibrated"] == 1.0 and m["prune/exact"] == 0.0
    exported = load_source(out / "model.safetensors").plain
    trained_pruned = load_source(run / "pruned.safetensors").plain
    assert exported.spec() == trained_pruned.spec()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(exported(x), trained_pruned(x))
