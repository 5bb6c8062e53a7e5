"""Prose quotes of docs/any_cnn.md's "Online or offline" section, checked against
docs/results/branch_cost.json (see `repvgg_lab.studies.prose`)."""

from __future__ import annotations

from repvgg_lab.bench.keys import branch_cost_key
from repvgg_lab.studies.prose import Quote, Record, results

DOC, FILE = "docs/any_cnn.md", "branch_cost.json"


def _ratio(r: Record, branches: str, mode: str, stat: str, net: str = "tv_resnet18") -> float:
    return results(r)["metrics"][branch_cost_key(net, branches, mode, f"{stat}_over_plain")]


SETS = ("repvgg", "acb", "dbb")


def _online_memory(r: Record) -> set[float]:
    """The online sets' memory ratios on resnet18, to the two decimals the prose shows."""
    return {round(_ratio(r, b, "online", "memory"), 2) for b in SETS}


def _memory(r: Record) -> tuple[str, ...]:
    offline = (_ratio(r, b, "offline", "memory") for b in SETS)
    return (f"{min(_online_memory(r)):.2f}", *(f"{v:.2f}" for v in offline))


def _dbb_time(r: Record) -> tuple[str, str]:
    return f"{_ratio(r, 'dbb', 'online', 'time'):.2f}", f"{_ratio(r, 'dbb', 'offline', 'time'):.2f}"


def _online_trains_faster(r: Record) -> bool:
    """Every set's online rows take less train.py wall time than its offline rows, DBB by the
    largest margin."""
    summary = results(r)["summary"]
    gain = {b: summary[b]["wall_s"] / summary[f"{b}_online"]["wall_s"] for b in SETS}
    return min(gain.values()) > 1 and max(gain, key=gain.get) == "dbb"


BRANCH_COST_QUOTES = [
    Quote(
        DOC,
        "about {}× the plain net's saved activations for every set on resnet18 at 224 px, "
        "against {}× (RepVGG), {}× (ACNet) and {}× (DBB) offline.",
        FILE,
        _memory,
        # "for every set": the online sets agree to two decimals.
        holds=lambda r: len(_online_memory(r)) == 1,
    ),
    Quote(
        DOC,
        "online DBB on resnet18 costs {}× the plain step at 224 px (target ≤ 1.3× holds; "
        "offline {}×), online RepVGG and ACNet branches about 1.0×.",
        FILE,
        _dbb_time,
        holds=lambda r: (
            _ratio(r, "dbb", "online", "time") <= 1.3
            and all(abs(_ratio(r, b, "online", "time") - 1.0) < 0.1 for b in SETS[:2])
        ),
    ),
    Quote(
        DOC,
        "online DBB is slower than offline there",
        FILE,
        holds=lambda r: (
            results(r)["metrics"][
                branch_cost_key("tv_resnet18", "dbb", "online", "time_over_plain_32px")
            ]
            > results(r)["metrics"][
                branch_cost_key("tv_resnet18", "dbb", "offline", "time_over_plain_32px")
            ]
        ),
    ),
    Quote(
        DOC,
        "the online rows train faster than the offline ones, DBB most of all",
        "any_cnn.json",
        holds=_online_trains_faster,
    ),
]
