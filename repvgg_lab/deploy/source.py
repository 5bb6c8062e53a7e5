"""Any supported checkpoint -> the multi-branch source net (if any) and its plain equivalent.

Formats: our Lightning checkpoints (architecture read from the file), official RepVGG and timm
state dicts (train or deploy form), torchvision-named weights of registry models, and the
safetensors files this package exports (architecture and plain-net layout in the metadata).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from repvgg_lab.deploy.errors import DeployError
from repvgg_lab.models import (
    Checkpoint,
    CheckpointError,
    create_model,
    load_pretrained,
    read_checkpoint,
    reparameterize,
)
from repvgg_lab.models.plain import PlainNet
from repvgg_lab.models.registry import get_config

log = logging.getLogger(__name__)

# safetensors metadata written by `plain_metadata` and read back by `load_source`.
METADATA_FORMAT = "repvgg_lab.plain"
_DEFAULT_IN_CHANNELS = 3
_DEFAULT_NUM_CLASSES = 1000
# First bytes of what torch.save writes: its zip container, or a (legacy) protocol-2+ pickle.
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


@dataclass
class Source:
    """What a checkpoint holds: the net as trained (None if already plain) and its plain form."""

    model_name: str
    num_classes: int
    in_channels: int
    format: str
    plain: nn.Module
    source: nn.Module | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: int | None = None  # the resolution the file says the net was trained at

    @property
    def deploy_form(self) -> bool:
        """True when the checkpoint was already plain, so there is no multi-branch net to check."""
        return self.source is None


def plain_metadata(src: Source) -> dict[str, str]:
    """safetensors metadata that lets `load_source` rebuild the plain net without `model=`."""
    meta = {
        "format": METADATA_FORMAT,
        "model_name": src.model_name,
        "num_classes": str(src.num_classes),
        "in_channels": str(src.in_channels),
        "deploy": "true",
        "model_kwargs": json.dumps(src.model_kwargs, sort_keys=True),
    }
    if src.input_size is not None:
        meta["input_size"] = str(src.input_size)
    if isinstance(src.plain, PlainNet):
        # A PlainNet's layout (pruned widths, activations) is not a registry entry: store it.
        meta["plain_spec"] = json.dumps(src.plain.spec(), sort_keys=True)
    return meta


def _safetensors_metadata(path: Path) -> dict[str, Any]:
    """Our own export's metadata as hyper-parameters; {} for any other file."""
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != METADATA_FORMAT:
        return {}
    try:
        info: dict[str, Any] = {
            "model_name": meta["model_name"],
            "num_classes": int(meta["num_classes"]),
            "in_channels": int(meta["in_channels"]),
            "model_kwargs": json.loads(meta.get("model_kwargs") or "{}"),
        }
        if "input_size" in meta:
            info["input_size"] = int(meta["input_size"])
        if "plain_spec" in meta:
            info["plain_spec"] = json.loads(meta["plain_spec"])
    except (KeyError, ValueError) as err:
        raise DeployError(f"{path}: damaged {METADATA_FORMAT} metadata ({err})") from None
    return info


def _check_kind(path: Path) -> None:
    """Name a file that is no checkpoint at all as such, instead of letting the unpickler call
    it unsafe (read_checkpoint reports missing files, folders and damaged checkpoints)."""
    if path.suffix == ".safetensors" or not path.is_file():
        return
    with path.open("rb") as f:
        head = f.read(4)
    if not head.startswith(_TORCH_MAGIC):
        what = "an empty file" if not head else "neither a PyTorch checkpoint nor safetensors"
        raise DeployError(f"{path} is not a checkpoint: {what}")


def _positive(info: dict[str, Any], key: str, path: Path) -> int | None:
    """A positive integer hyper-parameter, None when the file does not record it."""
    value = info.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DeployError(f"{path}: {key} must be a positive integer, found {value!r}")
    return value


def _net_only(ckpt: Checkpoint) -> Checkpoint:
    """Keep the `net.` weights of a Lightning checkpoint that also stores other modules' tensors."""
    if ckpt.source != "lightning" or not any(k.startswith("net.") for k in ckpt.state_dict):
        return ckpt
    state = {k[len("net.") :]: v for k, v in ckpt.state_dict.items() if k.startswith("net.")}
    return Checkpoint(state, ckpt.hyper_parameters, ckpt.source)


def _model_name(
    info: dict[str, Any], model: str | None, path: Path, fmt: str, *, registered: bool = True
) -> str:
    stated = info.get("model_name")
    if stated and model and stated != model:
        raise DeployError(
            f"{path} holds a {stated} checkpoint but model={model} was given; "
            f"drop model= or pass model={stated}"
        )
    name = model or stated
    if not name:
        raise DeployError(
            f"{path} ({fmt} format) does not say which architecture it holds; pass model=NAME "
            "(see repvgg_lab.list_models())"
        )
    if registered:
        get_config(name)  # an unknown name fails here, in one line
    return name


def _shapes(name: str, num_classes: int, deploy: bool, kwargs: dict[str, Any]) -> dict[str, tuple]:
    # The meta device builds the module tree without allocating or initialising weights.
    with torch.device("meta"):
        net = create_model(name, num_classes=num_classes, deploy=deploy, **kwargs)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def infer_num_classes(
    name: str, state: dict[str, Tensor], deploy: bool = False, **kwargs: Any
) -> int | None:
    """The class count read off the classifier weights, found as the tensors whose shape follows
    `num_classes` (`head.fc.weight`, `fc.weight`, `classifier.1.weight`...); None if absent."""
    one, two = (_shapes(name, n, deploy, kwargs) for n in (1, 2))
    for key in (k for k in one if one[k] != two.get(k)):
        if key in state and state[key].dim() >= 1:
            return int(state[key].shape[0])
    return None


def _build(name: str, num_classes: int, deploy: bool, kwargs: dict[str, Any]) -> nn.Module:
    try:
        return create_model(name, num_classes=num_classes, deploy=deploy, **kwargs)
    except TypeError as err:
        raise DeployError(f"cannot build {name} with {kwargs}: {err}") from None


def _load(net: nn.Module, ckpt: Checkpoint, path: Path, name: str) -> None:
    try:
        load_pretrained(net, ckpt.state_dict)
    except CheckpointError as err:
        raise DeployError(f"{path} is not a {name} checkpoint: {err}") from None


def load_source(path: str | Path, model: str | None = None) -> Source:
    """Read `path` safely (nothing in it is executed), build the net it holds and convert it.

    `model` names the architecture for files that do not say (official, timm, torchvision);
    a name that contradicts the file is an error rather than a silent override."""
    if model is not None:
        get_config(model)  # fail on a typo before touching the file
    path = Path(path)
    _check_kind(path)
    ckpt = _net_only(read_checkpoint(path))
    exported = _safetensors_metadata(path)
    info = {**ckpt.hyper_parameters, **exported}
    fmt = "repvgg_lab safetensors" if exported else ckpt.source
    kwargs = info.get("model_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise DeployError(f"{path}: model_kwargs must be a mapping, found {kwargs!r}")
    kwargs = dict(kwargs)
    in_channels = _positive(info, "in_channels", path) or _DEFAULT_IN_CHANNELS
    if in_channels != _DEFAULT_IN_CHANNELS:
        # Only passed when it differs: not every registry constructor takes `in_channels`.
        kwargs.setdefault("in_channels", in_channels)
    input_size = _positive(info, "input_size", path)

    if "plain_spec" in info:  # an exported PlainNet: its layout is in the file, not the registry
        name = _model_name(info, model, path, fmt, registered=False)
        plain = PlainNet.from_spec(info["plain_spec"])
        _load(plain, ckpt, path, name)
        num_classes = _positive(info, "num_classes", path) or _DEFAULT_NUM_CLASSES
        return Source(name, num_classes, in_channels, fmt, plain.eval(), None, kwargs, input_size)

    name = _model_name(info, model, path, fmt)
    num_classes = _positive(info, "num_classes", path) or infer_num_classes(
        name, ckpt.state_dict, ckpt.is_deploy, **kwargs
    )
    num_classes = num_classes or _DEFAULT_NUM_CLASSES
    net = _build(name, num_classes, ckpt.is_deploy, kwargs)
    _load(net, ckpt, path, name)
    net.eval()
    src = Source(name, num_classes, in_channels, fmt, net, None, kwargs, input_size)
    if not ckpt.is_deploy:
        src.source, src.plain = net, reparameterize(net).eval()
    log.info(
        "%s: %s %s checkpoint, %d classes%s",
        path,
        name,
        fmt,
        src.num_classes,
        " (already plain)" if src.deploy_form else "",
    )
    return src
