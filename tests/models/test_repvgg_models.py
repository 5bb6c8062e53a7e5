"""The RepVGG family: paper parameter counts, timm-compatible structure, registry behaviour."""

from __future__ import annotations

import pytest
import timm
import torch

from repvgg_lab.errors import UnknownModelError
from repvgg_lab.models import (
    MODELS,
    RepVGG,
    RepVGGBlock,
    create_model,
    list_models,
)
from repvgg_lab.utils import count_params

# (train-form, deploy-form) parameter counts at num_classes=1000, from the RepVGG paper / README
# (the deploy counts are the paper's, unrounded; the official code counts the same).
PAPER_PARAMS = {
    "repvgg_a0": (9_108_968, 8_309_384),
    "repvgg_b1g2": (45_782_376, 41_360_104),
    "repvgg_b2g4": (61_758_376, 55_777_512),
    "repvgg_b3": (123_085_288, 110_960_872),
    "repvgg_d2se": (133_334_836, 120_387_572),
}


def _blocks(model: torch.nn.Module) -> list[tuple[str, RepVGGBlock]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, RepVGGBlock)]


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_parameter_counts_equal_the_paper(name: str) -> None:
    with torch.device("meta"):  # shapes only: no memory, no init
        train, deploy = create_model(name), create_model(name, deploy=True)
    assert (count_params(train), count_params(deploy)) == PAPER_PARAMS[name]


@pytest.mark.parametrize("name", sorted(set(list_models()) & set(timm.list_models("repvgg*"))))
def test_state_dict_layout_equals_timm(name: str) -> None:
    """Same keys and shapes as timm's model: widths, depths, groups and SE all agree."""
    with torch.device("meta"):
        ours = create_model(name, num_classes=17).state_dict()
        theirs = timm.create_model(name, num_classes=17).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        k: tuple(v.shape) for k, v in theirs.items()
    }


def test_grouped_and_identity_layout_of_b1g4() -> None:
    with torch.device("meta"):
        model = create_model("repvgg_b1g4")
    assert model.stem.in_channels == 3 and model.stem.out_channels == 64
    for stage in model.stages:
        for i, block in enumerate(stage):
            # The paper groups layers 2, 4, ..., 26: every odd block inside a stage.
            assert block.groups == (4 if i % 2 == 1 else 1)
            assert block.stride == (2 if i == 0 else 1)
            has_identity = block.in_channels == block.out_channels and block.stride == 1
            assert (block.identity is not None) == has_identity
    assert [len(s) for s in model.stages] == [4, 6, 16, 1]
    assert [s[0].out_channels for s in model.stages] == [128, 256, 512, 2048]


def test_deploy_form_has_one_conv_per_block() -> None:
    with torch.device("meta"):
        model = create_model("repvgg_a0", deploy=True)
    blocks = _blocks(model)
    assert len(blocks) == 1 + 2 + 4 + 14 + 1
    for _, block in blocks:
        assert block.deploy and not hasattr(block, "conv_kxk")
        assert block.reparam_conv.bias is not None and block.reparam_conv.kernel_size == (3, 3)


def test_list_models_is_the_sorted_registry() -> None:
    names = list_models()
    assert names == sorted(MODELS) and {"repvgg_a0", "repvgg_b2g4", "repvgg_d2se"} <= set(names)


def test_unknown_model_lists_the_known_names() -> None:
    with pytest.raises(UnknownModelError) as info:
        create_model("repvgg_z9")
    message = str(info.value)
    assert "repvgg_z9" in message and all(name in message for name in list_models())
    assert isinstance(info.value, ValueError)


def test_groups_override_groups_the_odd_blocks() -> None:
    model = create_model("repvgg_a0", num_classes=5, groups=2)
    assert isinstance(model, RepVGG) and model.config.groups == 2
    grouped = {n for n, b in _blocks(model) if b.groups == 2}
    assert grouped == {
        f"stages.{s}.{i}" for s, d in enumerate((2, 4, 14, 1)) for i in range(1, d, 2)
    }
    assert model.stages[0][1].conv_kxk.conv.groups == 2
    with torch.device("meta"):
        plain_groups = count_params(create_model("repvgg_a0", num_classes=5))
    assert count_params(model) < plain_groups


def test_in_channels_override_builds_a_one_channel_net() -> None:
    model = create_model("repvgg_a0", num_classes=4, in_channels=1).eval()
    assert model.stem.conv_kxk.conv.in_channels == 1
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 4)


def test_unsupported_override_is_a_clear_type_error() -> None:
    with pytest.raises(TypeError, match="repvgg_a0.*colour_space"):
        create_model("repvgg_a0", colour_space="rgb")
