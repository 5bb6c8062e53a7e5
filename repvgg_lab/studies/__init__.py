"""Studies behind the docs: drift, the gamma sweep, pruning and RMNet cost.

`DOC_BLOCKS` maps every generated block in docs/ to the results file under docs/results/ it is
rendered from and its renderer (the whole record, as `repvgg_lab.results.read_results` reads it,
to the block's Markdown body)."""

from __future__ import annotations

from collections.abc import Callable

from repvgg_lab.studies import rmnet_cost

DOC_BLOCKS: dict[str, tuple[str, Callable[[dict], str]]] = {
    "rmnet_cost": ("rmnet_cost.json", rmnet_cost.render_cost),
    "rmnet_drift": ("rmnet_cost.json", rmnet_cost.render_drift),
    "rmnet_latency": ("rmnet_cost.json", rmnet_cost.render_latency),
}

__all__ = ["DOC_BLOCKS"]
