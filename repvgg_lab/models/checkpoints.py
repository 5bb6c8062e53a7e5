"""Safe checkpoint reading and key mapping (official RepVGG, timm, torchvision, our Lightning)."""

from __future__ import annotations

import json
import logging
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from repvgg_lab.errors import CheckpointError
from repvgg_lab.fileio import atomic_write, json_values

log = logging.getLogger(__name__)

# Official DingXiaoH/RepVGG names -> ours (which are timm's); applied in order.
OFFICIAL_TO_OURS: list[tuple[str, str]] = [
    (r"^stage0\.", "stem."),
    (r"^stage([1-4])\.(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}.{m[2]}."),
    (r"\.rbr_dense\.", ".conv_kxk."),
    (r"\.rbr_1x1\.", ".conv_1x1."),
    (r"\.rbr_identity\.", ".identity."),
    (r"\.rbr_reparam\.", ".reparam_conv."),
    (r"\.se\.down\.", ".attn.fc1."),
    (r"\.se\.up\.", ".attn.fc2."),
    (r"^linear\.", "head.fc."),
]
_WRAPPER_PREFIXES = ("module.", "net.", "model.", "_orig_mod.")
_DEPLOY_MARKERS = (".reparam_conv.", ".rbr_reparam.")
# A PlainNet (RMNet conversions, pruned nets) names its convs features.<i>.conv.{weight,bias}
# (torchvision's MobileNetV2 has features.<i>.conv.<j>..., so match the whole key).
_PLAIN_NET_KEY = re.compile(r"^features\.\d+\.conv\.(weight|bias)$")


def _deploy_form(keys: Any) -> bool:
    """True when state-dict keys belong to a plain (re-parameterized) net."""
    return any(any(m in "." + k for m in _DEPLOY_MARKERS) or _PLAIN_NET_KEY.match(k) for k in keys)


_MAX_LISTED = 6


@dataclass
class Checkpoint:
    """A state dict plus what the file says about itself."""

    state_dict: dict[str, Tensor]
    hyper_parameters: dict[str, Any] = field(default_factory=dict)
    format: str = "state_dict"  # lightning, repvgg_lab, wrapped, official or state_dict
    # The exponential moving average of the weights, when training kept one (`ema.decay`).
    ema_state_dict: dict[str, Tensor] | None = None

    @property
    def model_name(self) -> str | None:
        name = self.hyper_parameters.get("model_name")
        return name if isinstance(name, str) else None

    @property
    def is_deploy(self) -> bool:
        return _deploy_form(self.state_dict)


def _load_file(path: Path) -> Any:
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a directory, not a file: {path}")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        # weights_only: a restricted unpickler that builds tensors and plain containers only,
        # so a checkpoint can never execute code on load.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused to unpickle an object that is not a tensor or plain container "
            f"(the file may try to run code): {_unpickling_reason(err)}"
        ) from None
    except Exception as err:  # the restricted unpickler raises KeyError etc. on arbitrary bytes
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({msg})") from None


def _unpickling_reason(err: Exception) -> str:
    """What torch's weights-only unpickler refused (a GLOBAL or an opcode), without the rest of
    its message, which advises weights_only=False: the one thing not to do with untrusted files."""
    match = re.search(r"GLOBAL ([\w.]+)|Unsupported operand \d+", str(err))
    if match is None:
        return "unsupported object"
    return f"blocked global {match[1]}" if match[1] else match[0].lower()


_META_KEY = "repvgg_lab"


def _load_safetensors(path: Path) -> dict[str, Any]:
    """A safetensors file as {"state_dict": ..., "hyper_parameters": <our metadata>}."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types
        msg = " ".join(str(err).split())
        raise CheckpointError(f"{path}: not a readable safetensors file ({msg})") from None
    try:
        hparams = json.loads(meta.get(_META_KEY, "{}"))
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"{path}: the {_META_KEY!r} metadata block is not valid JSON ({err.msg})"
        ) from None
    if not isinstance(hparams, dict):
        raise CheckpointError(f"{path}: the {_META_KEY!r} metadata block is not a JSON object")
    return {"state_dict": state, "hyper_parameters": hparams}


def plain_metadata(plain: nn.Module, **info: Any) -> dict[str, Any]:
    """Metadata stored beside plain weights: `info` (model_name, num_classes, ...), the deploy
    flag and, for a PlainNet (RMNet conversions, pruned nets), its layout, which no registry
    entry describes."""
    from repvgg_lab.models.plain import PlainNet

    meta: dict[str, Any] = {**info, "deploy": True}
    if isinstance(plain, PlainNet):
        meta["plain_spec"] = plain.spec()
    return meta


def save_weights(
    model: nn.Module, path: str | Path, metadata: dict[str, Any] | None = None
) -> Path:
    """Write the state dict as safetensors (atomically), with `metadata` stored as JSON so
    `read_checkpoint` can tell what net the file holds."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {_META_KEY: json.dumps(json_values(metadata or {}), sort_keys=True)}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def read_checkpoint(path_or_state: str | Path | dict[str, Any]) -> Checkpoint:
    """Read a checkpoint file (or dict) safely and unwrap `state_dict` / `model` / `module.`."""
    obj = path_or_state if isinstance(path_or_state, dict) else _load_file(Path(path_or_state))
    label = "dict" if isinstance(path_or_state, dict) else str(path_or_state)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{label}: expected a dict of tensors, found {type(obj).__name__}")
    hparams: dict[str, Any] = {}
    fmt = "state_dict"
    ema = _tensors(obj.get("ema_state_dict"))
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        hparams = json_values(obj.get("hyper_parameters") or {})
        fmt = "lightning" if "pytorch-lightning_version" in obj else "wrapped"
        if hparams and fmt == "wrapped":
            fmt = "repvgg_lab"
        obj = obj["state_dict"]
    elif "model" in obj and isinstance(obj["model"], dict):
        obj, fmt = obj["model"], "wrapped"
    state = _tensors(obj) or {}
    if not state:
        raise CheckpointError(f"{label}: no tensors found; this is not a model checkpoint")
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    if any(k.startswith("stage0.") or ".rbr_" in k for k in state):
        state = {_rename(k, OFFICIAL_TO_OURS): v for k, v in state.items()}
        fmt = "official"
    return Checkpoint(state, hparams, fmt, ema)


def _tensors(obj: Any) -> dict[str, Tensor] | None:
    """The tensor entries of a state dict (None when `obj` is not a dict or holds none)."""
    if not isinstance(obj, dict):
        return None
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)} or None


def _rename(key: str, rules: list[tuple[str, Any]]) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")


def check_compatible(model: nn.Module, ckpt: Checkpoint) -> None:
    """Raise one CheckpointError naming missing/unexpected keys and shape mismatches."""
    expected = model.state_dict()
    model_deploy = _deploy_form(expected)
    if ckpt.is_deploy and not model_deploy:
        raise CheckpointError(
            "checkpoint holds a re-parameterized (deploy-form) net; create the model with "
            "deploy=True to load it"
        )
    if (
        model_deploy
        and not ckpt.is_deploy
        and any(".conv_kxk." in "." + k for k in ckpt.state_dict)
    ):
        raise CheckpointError(
            "checkpoint holds a multi-branch (training-form) net; load it into a deploy=False "
            "model and call reparameterize()"
        )
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(ckpt.state_dict) - optional)
    unexpected = sorted(set(ckpt.state_dict) - set(expected))
    mismatched = sorted(
        f"{k} {tuple(ckpt.state_dict[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(expected) & set(ckpt.state_dict)
        if ckpt.state_dict[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_listing(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_listing(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches ({_listing(mismatched)})")
    if problems:
        raise CheckpointError(
            f"checkpoint does not fit {type(model).__name__}: " + "; ".join(problems)
        )


def load_pretrained(model: nn.Module, path_or_state_dict: str | Path | dict[str, Any]) -> nn.Module:
    """Load weights strictly into `model` from any supported format; returns `model`.

    Accepts official RepVGG names (train and deploy `rbr_reparam` forms), timm names, torchvision
    names (RMNet models), our Lightning checkpoints and safetensors files, with or without a
    `module.` prefix or a `{"state_dict": ...}` / `{"model": ...}` wrapper. Never unpickles code.
    """
    ckpt = read_checkpoint(path_or_state_dict)
    check_compatible(model, ckpt)
    expected = model.state_dict()
    state = dict(ckpt.state_dict)
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = expected[key]
    model.load_state_dict(state, strict=True)
    log.info("loaded %d tensors (%s format)", len(ckpt.state_dict), ckpt.format)
    return model
