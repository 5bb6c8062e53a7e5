"""Below both deploy and quant: ONNX export and its graph checks, the ONNX Runtime and PyTorch
runners, and the streamed evaluator that measures any of them over a data loader."""

from repvgg_lab.runtime.export import ONNX_INPUT, ONNX_OUTPUT, export_onnx, onnx_graph
from repvgg_lab.runtime.runner import OnnxRunner, run_torch, torch_fn
from repvgg_lab.runtime.stream import Evaluation, as_batches, evaluate_stream

__all__ = [
    "ONNX_INPUT",
    "ONNX_OUTPUT",
    "Evaluation",
    "OnnxRunner",
    "as_batches",
    "evaluate_stream",
    "export_onnx",
    "onnx_graph",
    "run_torch",
    "torch_fn",
]
