"""repvgg_lab: train, re-parameterize, verify, prune and export re-parameterizable CNNs."""

from repvgg_lab.models import (
    DriftReport,
    RepConv,
    add_branches,
    create_model,
    list_models,
    load_pretrained,
    measure_drift,
    reparameterize,
)

__version__ = "0.1.0"

__all__ = [
    "DriftReport",
    "RepConv",
    "add_branches",
    "__version__",
    "create_model",
    "list_models",
    "load_pretrained",
    "measure_drift",
    "reparameterize",
]
