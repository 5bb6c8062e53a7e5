"""load_pretrained / read_checkpoint: every supported format loads exactly, every bad file is one
clear CheckpointError, and no checkpoint can run code."""

from __future__ import annotations

import os
import pickle
import re

import pytest
import torch
from safetensors.torch import save_file

from repvgg_lab.errors import CheckpointError
from repvgg_lab.models import (
    create_model,
    load_pretrained,
    read_checkpoint,
    reparameterize,
)
from repvgg_lab.models.checkpoints import OFFICIAL_TO_OURS
from tests.helpers.contract import official_names

# The inverse of OFFICIAL_TO_OURS, written out independently: our (timm) names -> the official
# DingXiaoH/RepVGG names.


@pytest.fixture
def source(trained):
    return trained("repvgg_a0", seed=3)


@pytest.fixture
def fresh():
    return create_model("repvgg_a0", num_classes=10)


def _assert_loaded(model, source) -> None:
    expected = source.state_dict()
    got = model.state_dict()
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_inverse_map_round_trips_through_the_official_one(source) -> None:
    # Guards the test fixture itself: official -> ours must undo ours -> official exactly.
    for key in source.state_dict():
        official = official_names({key: None}).popitem()[0]
        back = official
        for pattern, repl in OFFICIAL_TO_OURS:
            back = re.sub(pattern, repl, back)
        assert back == key


def test_official_train_form_names(source, fresh) -> None:
    official = official_names(source.state_dict())
    # The names of the official code, as its checkpoints spell them.
    for key in (
        "stage0.rbr_dense.conv.weight",
        "stage0.rbr_dense.bn.running_var",
        "stage1.0.rbr_1x1.conv.weight",
        "stage1.1.rbr_identity.weight",
        "stage3.13.rbr_dense.bn.bias",
        "linear.weight",
    ):
        assert key in official
    assert read_checkpoint(official).format == "official"
    _assert_loaded(load_pretrained(fresh, official), source)


def test_official_deploy_form_names(source) -> None:
    plain = reparameterize(source)
    official = official_names(plain.state_dict())
    assert "stage0.rbr_reparam.weight" in official and "stage4.0.rbr_reparam.bias" in official
    model = create_model("repvgg_a0", num_classes=10, deploy=True)
    _assert_loaded(load_pretrained(model, official), plain)


def test_official_se_names(trained) -> None:
    source = trained("repvgg_a0", se=True)
    official = official_names(source.state_dict())
    assert "stage2.3.se.down.weight" in official and "stage2.3.se.up.bias" in official
    _assert_loaded(
        load_pretrained(create_model("repvgg_a0", num_classes=10, se=True), official), source
    )


def test_timm_names(fresh) -> None:
    import timm

    theirs = timm.create_model("repvgg_a0", num_classes=10)
    loaded = load_pretrained(fresh, theirs.state_dict())
    _assert_loaded(loaded, theirs)


def test_returns_the_model_it_was_given(source, fresh) -> None:
    assert load_pretrained(fresh, source.state_dict()) is fresh


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"state_dict": sd},
        lambda sd: {"model": sd},
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3},
        lambda sd: {"model": official_names({f"module.{k}": v for k, v in sd.items()})},
    ],
    ids=["module_prefix", "state_dict_wrapper", "model_wrapper", "both", "official_in_model"],
)
@pytest.mark.parametrize("via_file", [False, True], ids=["dict", "file"])
def test_wrappers_and_prefixes(wrap, via_file, source, fresh, tmp_path) -> None:
    ckpt = wrap(source.state_dict())
    if via_file:
        torch.save(ckpt, tmp_path / "ckpt.pth")
        ckpt = tmp_path / "ckpt.pth"
    _assert_loaded(load_pretrained(fresh, ckpt), source)


def test_lightning_checkpoint_keeps_hyper_parameters(source, tmp_path) -> None:
    path = tmp_path / "last.ckpt"
    torch.save(
        {
            "state_dict": {f"net.{k}": v for k, v in source.state_dict().items()},
            "hyper_parameters": {"model_name": "repvgg_a0", "lr": 0.1},
            "pytorch-lightning_version": "2.6.0",
        },
        path,
    )
    ckpt = read_checkpoint(path)
    assert ckpt.format == "lightning" and ckpt.model_name == "repvgg_a0"
    assert ckpt.hyper_parameters["lr"] == 0.1
    _assert_loaded(load_pretrained(create_model("repvgg_a0", num_classes=10), path), source)


def test_safetensors_file(source, fresh, tmp_path) -> None:
    path = tmp_path / "weights.safetensors"
    save_file(source.state_dict(), str(path))
    _assert_loaded(load_pretrained(fresh, path), source)
    plain = reparameterize(source)
    save_file(official_names(plain.state_dict()), str(tmp_path / "deploy.safetensors"))
    deploy = create_model("repvgg_a0", num_classes=10, deploy=True)
    _assert_loaded(load_pretrained(deploy, tmp_path / "deploy.safetensors"), plain)


@pytest.mark.parametrize(
    ("block", "problem"), [("{not json", "not valid JSON"), ("[1, 2]", "not a JSON object")]
)
def test_malformed_safetensors_metadata_is_an_error_not_empty(source, tmp_path, block, problem):
    path = tmp_path / "weights.safetensors"
    save_file(source.state_dict(), str(path), metadata={"repvgg_lab": block})
    with pytest.raises(CheckpointError, match=f"metadata block is {problem}"):
        read_checkpoint(path)


@pytest.mark.parametrize("official", [False, True])
def test_deploy_checkpoint_into_train_model_says_deploy_true(source, fresh, official) -> None:
    state = reparameterize(source).state_dict()
    with pytest.raises(CheckpointError, match="deploy=True"):
        load_pretrained(fresh, official_names(state) if official else state)


def test_train_checkpoint_into_deploy_model_says_reparameterize(source) -> None:
    deploy = create_model("repvgg_a0", num_classes=10, deploy=True)
    with pytest.raises(CheckpointError, match="reparameterize"):
        load_pretrained(deploy, source.state_dict())


def test_mismatches_are_one_error_naming_them_and_nothing_loads(source, fresh) -> None:
    state = dict(source.state_dict())
    del state["stages.1.2.conv_1x1.bn.running_mean"]
    state["stages.9.0.extra.weight"] = torch.zeros(1)
    state["stem.conv_kxk.conv.weight"] = torch.zeros(48, 3, 5, 5)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_pretrained(fresh, state)
    message = str(info.value)
    assert "stages.1.2.conv_1x1.bn.running_mean" in message and "missing" in message
    assert "stages.9.0.extra.weight" in message and "unexpected" in message
    assert "stem.conv_kxk.conv.weight (48, 3, 5, 5) vs (48, 3, 3, 3)" in message
    assert "\n" not in message
    for key, value in fresh.state_dict().items():  # strict: not even the fitting tensors load
        assert torch.equal(value, before[key]), key


def test_wrong_class_count_is_a_shape_mismatch(source) -> None:
    with pytest.raises(CheckpointError, match=r"head\.fc\.weight \(10, 1280\) vs \(7, 1280\)"):
        load_pretrained(create_model("repvgg_a0", num_classes=7), source.state_dict())


class _RunsCode:
    """Unpickling this object calls `action(*args)`: the classic malicious checkpoint."""

    def __init__(self, action, *args) -> None:
        self.action, self.args = action, args

    def __reduce__(self):
        return self.action, self.args


def _payloads(marker):
    return {
        "os_system": _RunsCode(os.system, f"touch {marker}"),
        "exec": _RunsCode(exec, f"open({str(marker)!r}, 'w').write('pwned')"),
    }


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("payload", ["os_system", "exec"])
@pytest.mark.parametrize("writer", ["torch_save", "pickle_protocol_2", "pickle_protocol_5"])
def test_a_pickle_that_runs_code_is_refused_and_does_not_run(payload, writer, tmp_path) -> None:
    # Control: the payload is live, plain unpickling really runs it.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_payloads(probe)[payload]))
    assert probe.exists()

    marker = tmp_path / "marker"
    evil = {"stem.conv_kxk.conv.weight": torch.zeros(1), "x": _payloads(marker)[payload]}
    path = tmp_path / "evil.pth"
    if writer == "torch_save":
        torch.save(evil, path)
    else:  # no tensor in a bare pickle, so the payload is the first thing the loader meets
        path.write_bytes(pickle.dumps({"x": evil["x"]}, protocol=int(writer[-1])))
    with pytest.raises(CheckpointError, match="refused to unpickle") as info:
        load_pretrained(create_model("repvgg_a0", num_classes=10), path)
    assert not marker.exists()
    if writer != "pickle_protocol_5":  # there the loader stops earlier, at protocol-4 framing
        assert ("system" if payload == "os_system" else "exec") in str(info.value)


def test_refusal_names_the_blocked_call_without_advising_unsafe_loading(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"x": _RunsCode(os.system, "true")}, path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "blocked global" in message and "system" in message
    assert "weights_only" not in message and "\n" not in message


def _bad_file(kind: str, folder, source):
    """Write one kind of broken checkpoint into `folder`; returns its path."""
    path = folder / "bad.pth"
    if kind == "truncated":
        torch.save(source.state_dict(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "text":
        path.write_text("epoch,loss\n1,0.5\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "bad_safetensors":
        path = folder / "bad.safetensors"
        path.write_bytes(b"\x08\x00junk")
    elif kind == "bare_tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "no_tensors":
        torch.save({"epoch": 3, "lr": 0.1}, path)
    elif kind == "missing":
        path = folder / "missing.pth"
    elif kind == "directory":
        path = folder
    return path


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("truncated", "not a readable PyTorch checkpoint"),
        ("text", "not a readable PyTorch checkpoint"),
        ("empty", "not a readable PyTorch checkpoint"),
        ("bad_safetensors", "not a readable safetensors file"),
        ("bare_tensor", "expected a dict of tensors, found Tensor"),
        ("no_tensors", "no tensors found"),
        ("missing", "not found"),
        ("directory", "is a directory"),
    ],
)
def test_bad_files_are_one_clear_checkpoint_error(kind, match, source, fresh, tmp_path) -> None:
    path = _bad_file(kind, tmp_path, source)
    with pytest.raises(CheckpointError, match=match) as info:
        load_pretrained(fresh, path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_plain_rmnet_weights_need_a_deploy_form_model() -> None:
    plain = reparameterize(create_model("rmnet_resnet18", num_classes=10))
    with pytest.raises(CheckpointError, match="deploy=True"):
        load_pretrained(create_model("rmnet_resnet18", num_classes=10), plain.state_dict())
    loaded = load_pretrained(
        create_model("rmnet_resnet18", num_classes=10, deploy=True), plain.state_dict()
    )
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), plain.eval()(x))
