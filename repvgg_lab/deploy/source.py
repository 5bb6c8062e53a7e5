"""Any supported checkpoint -> the multi-branch source net (if any) and its plain equivalent.

Formats: our Lightning checkpoints and safetensors files (architecture read from the file),
official RepVGG and timm state dicts (train or deploy form) and torchvision-named weights of
registry models (architecture from `model=`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from repvgg_lab.errors import CheckpointError, DeployError
from repvgg_lab.models import (
    Checkpoint,
    create_model,
    load_pretrained,
    read_checkpoint,
    reparameterize,
    save_weights,
)
from repvgg_lab.models.checkpoints import plain_metadata
from repvgg_lab.models.convert import convertible_modules
from repvgg_lab.models.plain import PlainNet
from repvgg_lab.models.registry import get_config

log = logging.getLogger(__name__)

DEFAULT_IN_CHANNELS = 3
DEFAULT_NUM_CLASSES = 1000
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
    trained: nn.Module | None = None  # the multi-branch net; None for a plain checkpoint
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: int | None = None  # the resolution the file says the net was trained at
    weights: str = "trained"  # "ema": the checkpoint's moving average of the weights

    @property
    def deploy_form(self) -> bool:
        """True when the checkpoint was already plain, so there is no multi-branch net to check."""
        return self.trained is None

    def metadata(self) -> dict[str, Any]:
        """What `load_source` needs to rebuild the plain net from its weights alone."""
        return plain_metadata(
            self.plain,
            model_name=self.model_name,
            num_classes=self.num_classes,
            in_channels=self.in_channels,
            input_size=self.input_size,
            model_kwargs=self.model_kwargs,
        )


def save_plain(src: Source, path: str | Path) -> Path:
    """The plain weights as safetensors, with the metadata `load_source` reads back."""
    return save_weights(src.plain, path, src.metadata())


def _check_kind(path: Path) -> None:
    """Name a file that is no checkpoint at all as such, instead of letting the unpickler call
    it unsafe (read_checkpoint reports missing files, folders and damaged checkpoints)."""
    if path.suffix == ".safetensors" or not path.is_file():
        return
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError:
        return  # unreadable: read_checkpoint names the OS error
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
    """Keep the `net.` weights of a Lightning checkpoint that also stores other modules'
    tensors; a checkpoint that kept an exponential moving average gives that instead (it is
    what the run deployed)."""
    if ckpt.ema_state_dict is not None:
        return Checkpoint(ckpt.ema_state_dict, ckpt.hyper_parameters, ckpt.format)
    if ckpt.format != "lightning" or not any(k.startswith("net.") for k in ckpt.state_dict):
        return ckpt
    state = {k[len("net.") :]: v for k, v in ckpt.state_dict.items() if k.startswith("net.")}
    return Checkpoint(state, ckpt.hyper_parameters, ckpt.format)


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
    raw = read_checkpoint(path)
    ckpt = _net_only(raw)
    weights = "ema" if raw.ema_state_dict is not None else "trained"
    info, fmt = ckpt.hyper_parameters, ckpt.format
    kwargs = info.get("model_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise DeployError(f"{path}: model_kwargs must be a mapping, found {kwargs!r}")
    kwargs = dict(kwargs)
    in_channels = _positive(info, "in_channels", path) or DEFAULT_IN_CHANNELS
    if in_channels != DEFAULT_IN_CHANNELS:
        # Only passed when it differs: not every registry constructor takes `in_channels`.
        kwargs.setdefault("in_channels", in_channels)
    input_size = _positive(info, "input_size", path)
    deploy = ckpt.is_deploy or info.get("deploy") is True

    spec = info.get("plain_spec")
    if isinstance(spec, dict):  # an exported PlainNet: its layout is in the file, not the registry
        name = _model_name(info, model, path, fmt, registered=False)
        plain: nn.Module = PlainNet.from_spec(spec)
        _load(plain, ckpt, path, name)
        num_classes = _positive(info, "num_classes", path) or plain.head.fc.out_features
        return Source(
            name, num_classes, in_channels, fmt, plain.eval(), None, kwargs, input_size, weights
        )

    name = _model_name(info, model, path, fmt)
    num_classes = (
        _positive(info, "num_classes", path)
        or infer_num_classes(name, ckpt.state_dict, deploy, **kwargs)
        or DEFAULT_NUM_CLASSES  # no classifier weights found: loading will say what is wrong
    )
    net = _build(name, num_classes, deploy, kwargs)
    _load(net, ckpt, path, name)
    src = Source(name, num_classes, in_channels, fmt, net.eval(), None, kwargs, input_size, weights)
    # A net trained without branches (tv_* with branches=none) is already plain: used as it is.
    if not deploy and convertible_modules(net):
        src.trained, src.plain = net, reparameterize(net).eval()
    log.info(
        "%s: %s checkpoint (%s format, %s weights), %d classes%s",
        path,
        name,
        fmt,
        "moving-average (EMA)" if weights == "ema" else "trained",
        num_classes,
        ", already plain" if src.deploy_form else "",
    )
    return src
