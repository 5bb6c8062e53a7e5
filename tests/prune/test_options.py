"""`PruneOptions`: every bad option is refused once, in one line naming it as the user types it;
the config node's `enabled` switch and null values mean what configs/prune/none.yaml says."""

from __future__ import annotations

import dataclasses
import math

import pytest

from repvgg_lab.errors import PruningError
from repvgg_lab.prune import PruneOptions, prune_plain
from tests.helpers.prune_nets import build_net

BAD = {
    "two criteria": (
        {"threshold": 0.0, "ratio": 0.5},
        "give exactly one pruning criterion, got prune.threshold and prune.ratio",
    ),
    "three criteria": (
        {"threshold": 0.0, "ratio": 0.5, "macs_reduction": 0.3},
        "prune.threshold and prune.ratio and prune.macs_reduction",
    ),
    "ratio above 1": ({"ratio": 2}, "prune.ratio must lie in [0, 1], got 2"),
    "negative ratio": ({"ratio": -0.1}, "prune.ratio must lie in [0, 1], got -0.1"),
    "ratio as text": ({"ratio": "0.3"}, "prune.ratio must be a number, got '0.3'"),
    "macs_reduction 1": ({"macs_reduction": 1.0}, "prune.macs_reduction must lie in (0, 1)"),
    "macs_reduction 0": ({"macs_reduction": 0}, "prune.macs_reduction must lie in (0, 1)"),
    "NaN threshold": ({"threshold": math.nan}, "prune.threshold must be a number, got nan"),
    "infinite threshold": ({"threshold": math.inf}, "prune.threshold must be finite"),
    "bool threshold": ({"threshold": True}, "prune.threshold must be a number, got True"),
    "scope": ({"scope": "net"}, "prune.scope must be one of layer, global, got 'net'"),
    "score": ({"score": "l1"}, "prune.score must be one of l2, l2_next, got 'l1'"),
    "normalize": ({"normalize": "yes"}, "prune.normalize must be one of False, True"),
    "min_channels 0": ({"min_channels": 0}, "prune.min_channels must be an integer >= 1, got 0"),
    "min_channels float": ({"min_channels": 1.5}, "prune.min_channels must be an integer >= 1"),
    "multiple": ({"multiple": 0}, "prune.multiple must be an integer >= 1, got 0"),
    "multiple bool": ({"multiple": True}, "prune.multiple must be an integer >= 1, got True"),
    "calibration_batches": (
        {"calibration_batches": -1},
        "prune.calibration_batches must be an integer >= 0, got -1",
    ),
    "latency_rounds": ({"latency_rounds": 2.0}, "prune.latency_rounds must be an integer >= 0"),
}


@pytest.mark.parametrize("case", BAD)
def test_each_bad_option_is_one_line_naming_it(case) -> None:
    values, message = BAD[case]
    with pytest.raises(PruningError) as err:
        PruneOptions(**values)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("case", ["ratio above 1", "scope", "min_channels 0"])
def test_the_config_node_is_checked_by_the_same_object(case) -> None:
    values, message = BAD[case]
    with pytest.raises(PruningError, match="^" + message.replace("[", r"\[").replace("(", r"\(")):
        PruneOptions.from_mapping({"enabled": True, **values})


def test_no_criterion_means_exact_pruning() -> None:
    options = PruneOptions()
    assert options.criterion == ("threshold", 0.0)
    node = {"enabled": True, "threshold": None, "ratio": None, "macs_reduction": None}
    assert PruneOptions.from_mapping(node) == options


def test_a_node_that_asks_for_nothing_gives_no_options() -> None:
    assert PruneOptions.from_mapping(None) is None
    assert PruneOptions.from_mapping({}) is None
    assert PruneOptions.from_mapping({"enabled": False, "ratio": None, "sparsity": 0.0}) is None


def test_a_criterion_set_by_hand_enables_pruning_and_nulls_take_the_defaults() -> None:
    node = {"enabled": False, "ratio": 1, "scope": None, "score": "l2_next", "sparsity": 1e-3}
    options = PruneOptions.from_mapping(node)
    assert options == PruneOptions(ratio=1.0, score="l2_next")
    assert options.criterion == ("ratio", 1.0) and isinstance(options.ratio, float)
    assert options.scope == "global" and options.threshold is None


def test_an_unknown_key_is_refused() -> None:
    with pytest.raises(PruningError, match="unknown option prune.treshold"):
        PruneOptions.from_mapping({"enabled": True, "treshold": 0.0})


def test_options_are_frozen_and_round_trip_as_a_dict() -> None:
    options = PruneOptions(macs_reduction=0.3, calibration_batches=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.ratio = 0.5  # type: ignore[misc]
    assert PruneOptions(**options.as_dict()) == options


def test_the_keyword_functions_use_the_same_checks() -> None:
    with pytest.raises(PruningError, match=r"prune.ratio must lie in \[0, 1\], got 1.5"):
        prune_plain(build_net(), ratio=1.5)


def test_a_bad_value_is_refused_even_when_pruning_is_off() -> None:
    with pytest.raises(PruningError, match="prune.score must be one of"):
        PruneOptions.from_mapping({"enabled": False, "score": "l1"})
