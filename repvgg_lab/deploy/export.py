"""Writers for the deployable artefacts (ONNX, torch.export program, safetensors) and the check
that the exported graph really is plain."""

from __future__ import annotations

import io
import logging
import warnings
from collections import Counter
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from repvgg_lab.errors import DeployError

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
    buffer = io.BytesIO()
    model.eval()
    with warnings.catch_warnings(), torch.no_grad():
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
    onnx.save(proto, str(path))
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
