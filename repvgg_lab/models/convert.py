"""Walk any module tree and replace every re-parameterizable module by its plain equivalent."""

from __future__ import annotations

import copy
import logging

from torch import nn

log = logging.getLogger(__name__)


def is_reparameterizable(module: nn.Module) -> bool:
    """True for a module that still has branches and can build its plain form (`to_plain`)."""
    return callable(getattr(module, "to_plain", None)) and not getattr(module, "deploy", False)


def convertible_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Outermost re-parameterizable modules of `model`, by qualified name ('' for the root)."""
    found: list[tuple[str, nn.Module]] = []

    def visit(name: str, module: nn.Module) -> None:
        if is_reparameterizable(module):
            found.append((name, module))
            return
        for child_name, child in module.named_children():
            visit(f"{name}.{child_name}" if name else child_name, child)

    visit("", model)
    return found


def _has_plain_blocks(model: nn.Module) -> bool:
    # Any module flagged deploy=True counts: converted blocks and whole plain nets (PlainNet,
    # which RMNet conversion produces) alike, so converting them again is a no-op, not an error.
    return any(getattr(m, "deploy", False) is True for m in model.modules())


def _plain_forms(name: str, module: nn.Module) -> dict[str, nn.Module]:
    """{qualified name: plain module} for one convertible module: its plain form, and for a
    module standing for a conv + BN pair (add_branches' `plain_parts`) the BN beside it too."""
    parts = getattr(module, "plain_parts", None)
    if parts is None:
        return {name: module.to_plain()}
    parent = name.rpartition(".")[0]
    return {
        (f"{parent}.{key}" if parent else key) if key else name: part
        for key, part in parts().items()
    }


def reparameterize(
    model: nn.Module, *, inplace: bool = False, allow_plain: bool = False
) -> nn.Module:
    """Return the plain (single-branch) equivalent of `model`.

    Every re-parameterizable module anywhere in the tree (a user's model that embeds the blocks
    too) is replaced by its plain form. The fusion reads BN *running* statistics whatever the
    module's train/eval mode, so batch statistics never leak in; arithmetic runs in float64 and is
    rounded once to the model's dtype, on the model's device. Unless `inplace`, the result is a new
    module and `model` is left untouched; only the non-convertible parts are deep-copied.
    With `inplace`, use the returned module: a convertible root cannot change identity.
    With `allow_plain`, a net without any branches (e.g. a torchvision net trained with
    branches="none") is its own plain form, returned (copied unless `inplace`) with a log line.
    """
    targets = convertible_modules(model)
    if not targets:
        if _has_plain_blocks(model) or allow_plain:
            if _has_plain_blocks(model):
                log.info("model is already re-parameterized; nothing to convert")
            else:
                log.info("%s has no branches: it is its own plain form", type(model).__name__)
            return model if inplace else copy.deepcopy(model)
        raise TypeError(
            f"{type(model).__name__} contains no re-parameterizable repvgg_lab blocks; build it "
            "with repvgg_lab.create_model(...) and load foreign weights with load_pretrained()"
        )
    plain = {k: v for name, module in targets for k, v in _plain_forms(name, module).items()}
    if "" in plain:
        return plain[""]
    if not inplace:
        memo = {id(model.get_submodule(name)): new for name, new in plain.items()}
        return copy.deepcopy(model, memo)
    for name, replacement in plain.items():
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, replacement)
    return model
