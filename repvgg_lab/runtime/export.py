"""Writers for the deployable artefacts (ONNX, torch.export program, safetensors) and the check
that the exported graph really is plain (or, for tv_* nets, the source architecture's own)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from repvgg_lab.errors import DeployError, UnknownModelError
from repvgg_lab.models.registry import create_model, get_config

log = logging.getLogger(__name__)

ONNX_INPUT, ONNX_OUTPUT = "input", "logits"
DEFAULT_OPSET = 17
# Clip with tensor bounds (ReLU6) needs opset 11; the TorchScript-based exporter stops at 20.
OPSETS = range(11, 21)

# What a plain classifier may contain: convs, per-channel clamps (ReLU, ReLU6 as Clip, RMNet's
# mixed-bound clamps as Max/Min), pooling, the classifier, and the squeeze-excite ops (pooled
# mean, Sigmoid, Mul). An unconverted net shows up as Add (branch sums) or BatchNormalization.
PLAIN_OPS = frozenset(
    {
        "Conv",
        "Relu",
        "Clip",
        "Max",
        "Min",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "ReduceMean",
        "Flatten",
        "Gemm",
        "Sigmoid",
        "Mul",
    }
)


def _data_as_initializers(proto: onnx.ModelProto) -> None:
    """Turn nodes that only hold data into initializers: `Constant` tensors (e.g. Clip bounds)
    and `Identity(initializer)` (the exporter de-duplicates equal weights, e.g. all-zero biases,
    and feeds the copies through Identity). Both would make a plain graph look less plain."""
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    keep = []
    for node in graph.node:
        tensor = None
        if node.op_type == "Identity" and node.input[0] in inits:
            tensor = inits[node.input[0]]
        elif node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            tensor = node.attribute[0].t
        if tensor is None:
            keep.append(node)
            continue
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        copy.name = node.output[0]
        graph.initializer.append(copy)
        inits[copy.name] = copy
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)


def export_onnx(
    model: nn.Module, path: str | Path, example: Tensor, opset: int = DEFAULT_OPSET
) -> onnx.ModelProto:
    """Export `model` to ONNX with dynamic batch, height and width; returns the checked graph."""
    proto = onnx_graph(model, example, opset)
    onnx.save(proto, str(path))
    return proto


@contextlib.contextmanager
def _export_errors(model: nn.Module) -> Iterator[None]:
    """An operator the exporter cannot write with dynamic height and width (e.g. VGG's adaptive
    pooling to 7x7) is a one-line DeployError, not a traceback from inside torch.onnx."""
    try:
        yield
    except torch.onnx.errors.OnnxExporterError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DeployError(
            f"{type(model).__name__} cannot be exported to ONNX with dynamic batch, height and "
            f"width: {first.split('. Please')[0]}"
        ) from None


def onnx_graph(model: nn.Module, example: Tensor, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """`model` as a checked ONNX graph (what `export_onnx` writes), in memory."""
    buffer = io.BytesIO()
    model.eval()
    with warnings.catch_warnings(), torch.no_grad(), _export_errors(model):
        # The TorchScript-based exporter handles these conv chains without extra dependencies
        # (the torch.export-based one needs onnxscript); silence its deprecation notice.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
            dynamic_axes={
                ONNX_INPUT: {0: "batch", 2: "height", 3: "width"},
                ONNX_OUTPUT: {0: "batch"},
            },
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    _data_as_initializers(proto)
    onnx.checker.check_model(proto)
    return proto


def op_counts(proto: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each op type the graph has."""
    return dict(Counter(node.op_type for node in proto.graph.node))


def check_plain_graph(
    proto: onnx.ModelProto, allowed: frozenset[str] = PLAIN_OPS
) -> dict[str, int]:
    """Raise DeployError if the graph holds any op outside `allowed`; returns the op counts."""
    counts = op_counts(proto)
    bad = {op: n for op, n in sorted(counts.items()) if op not in allowed}
    if bad:
        found = ", ".join(f"{n} {op}" for op, n in bad.items())
        allowed_list = ", ".join(sorted(allowed))
        raise DeployError(
            f"exported graph is not plain: it contains {found} (allowed: {allowed_list})"
        )
    return counts


# Extra convs, branch sums and unfused BNs: how unconverted branches show in a graph.
_TELLING_OPS = {"Conv": 0, "Add": 1, "BatchNormalization": 2}


def conv_weight_shapes(proto: onnx.ModelProto) -> list[tuple[int, ...] | None]:
    """The weight shape of every Conv node in graph order (None: a weight computed in-graph)."""
    shapes = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    return [shapes.get(node.input[1]) for node in proto.graph.node if node.op_type == "Conv"]


def check_same_graph(
    proto: onnx.ModelProto, reference: onnx.ModelProto, name: str
) -> dict[str, int]:
    """Raise DeployError unless `proto` has the op types of `reference` (the architecture's own
    graph), each as often, and the same conv weight shapes in the same order; returns the op
    counts. Branches left unconverted show up as extra Conv, Add or BatchNormalization nodes."""
    counts, expected = op_counts(proto), op_counts(reference)
    if counts != expected:
        ops = [op for op in set(counts) | set(expected) if counts.get(op, 0) != expected.get(op, 0)]
        # The ops that tell what went wrong first, then the rest (capped: one readable line).
        ops.sort(key=lambda op: (op not in _TELLING_OPS, _TELLING_OPS.get(op, 0), op))
        diff = ", ".join(f"{counts.get(op, 0)} {op} (vs {expected.get(op, 0)})" for op in ops[:6])
        more = f" and {len(ops) - 6} more op types" if len(ops) > 6 else ""
        raise DeployError(
            f"exported graph is not {name}'s own: it has {diff}{more} in {name} built fresh; "
            "branches were left unconverted or the architecture changed"
        )
    shapes, want = conv_weight_shapes(proto), conv_weight_shapes(reference)
    bad = [i for i, (a, b) in enumerate(zip(shapes, want, strict=True)) if a != b]
    if bad:
        i, more = bad[0], f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise DeployError(
            f"exported graph is not {name}'s own: conv {i} has weight shape {shapes[i]} "
            f"(vs {want[i]} in {name} built fresh){more}"
        )
    return counts


def architecture_graph(
    name: str, num_classes: int, kwargs: dict[str, Any], example: Tensor, opset: int
) -> onnx.ModelProto | None:
    """The ONNX graph of a freshly built deploy form of `name`, for models whose deploy form is
    an architecture of its own (tv_* nets); None for nets that are plain by design."""
    try:
        config = get_config(name)
    except UnknownModelError:  # a layout read from the file itself (a PlainNet): plain by design
        return None
    if not getattr(config, "keeps_architecture", False):
        return None
    with torch.random.fork_rng():  # the fresh net's random init must not move the caller's seed
        net = create_model(name, num_classes=num_classes, deploy=True, **kwargs)
    return onnx_graph(net.to(example.dtype), example, opset)


def check_exported_graph(
    proto: onnx.ModelProto,
    name: str,
    num_classes: int,
    kwargs: dict[str, Any],
    example: Tensor,
    opset: int = DEFAULT_OPSET,
) -> dict[str, int]:
    """The gate on the exported graph: the architecture's own graph for tv_* nets
    (`check_same_graph`), plain ops (`check_plain_graph`) for the rest; returns op counts."""
    reference = architecture_graph(name, num_classes, kwargs, example, opset)
    if reference is None:
        return check_plain_graph(proto)
    return check_same_graph(proto, reference, name)


def export_program(model: nn.Module, path: str | Path, example: Tensor) -> None:
    """Save a `torch.export` program with a dynamic batch; height and width stay those of
    `example` (torch.export specialises on the 1x1 feature map of small inputs)."""
    if example.shape[0] < 2:
        # A batch-1 example would specialise the batch dimension to 1.
        example = example.expand(2, *example.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))


def load_program(path: str | Path) -> nn.Module:
    """The module of a saved `torch.export` program."""
    return torch.export.load(str(path)).module()
