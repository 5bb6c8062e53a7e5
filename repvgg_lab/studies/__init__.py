"""Studies behind the docs: the default run, drift, the gamma sweep, pruning, RMNet cost, int8,
branches for any CNN.

`DOC_BLOCKS` maps every generated block in docs/ to the results file under docs/results/ it is
rendered from and its renderer (the whole record, as `repvgg_lab.results.read_results` reads it,
to the block's Markdown body)."""

from __future__ import annotations

from collections.abc import Callable

from repvgg_lab.studies import (
    any_cnn,
    default_run,
    drift_probe,
    gamma_sweep,
    prune_scores,
    prune_study,
    quant_study,
    rmnet_cost,
)

DOC_BLOCKS: dict[str, tuple[str, Callable[[dict], str]]] = {
    "rmnet_cost": ("rmnet_cost.json", rmnet_cost.render_cost),
    "rmnet_drift": ("rmnet_cost.json", rmnet_cost.render_drift),
    "rmnet_latency": ("rmnet_cost.json", rmnet_cost.render_latency),
    **{
        f"drift_probe_{name}": ("drift_probe.json", drift_probe.render_case(name))
        for name in drift_probe.CASES
    },
    "gamma_sweep": ("gamma_sweep.json", gamma_sweep.render_summary),
    "prune_scores": ("prune_scores.json", prune_scores.render),
    "prune_study_accuracy": ("prune_study.json", prune_study.render_accuracy),
    "prune_study_cost": ("prune_study.json", prune_study.render_cost),
    "prune_study_acceptance": ("prune_study.json", prune_study.render_acceptance),
    "default_run": ("default_run.json", default_run.render_default_run),
    "quant_accuracy": ("quant_study.json", quant_study.render_accuracy),
    "quant_drop": ("quant_study.json", quant_study.render_drop),
    "quant_layers": ("quant_study.json", quant_study.render_layers),
    "quant_speed": ("quant_study.json", quant_study.render_speed),
    "quant_params": ("quant_study.json", quant_study.render_params),
    "any_cnn": ("any_cnn.json", any_cnn.render),
    "any_cnn_conversion": ("any_cnn.json", any_cnn.render_conversion),
}

__all__ = ["DOC_BLOCKS"]
