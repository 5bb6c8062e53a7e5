"""The registered quotes of README.md and docs/*.md (`repvgg_lab.studies.prose`), page by page:
each sentence that quotes a measurement, the results file behind it and when it is true (those
of docs/benchmarks.md and docs/precision.md are in `prose_bench`)."""

from __future__ import annotations

from typing import Any

from repvgg_lab.bench import keys
from repvgg_lab.studies.prose import (
    Quote,
    Record,
    decades,
    image_count,
    median,
    number_word,
    results,
    round_to,
)
from repvgg_lab.studies.prose_bench import BENCHMARK_QUOTES, PRECISION_QUOTES
from repvgg_lab.studies.prose_branches import BRANCH_COST_QUOTES

# ---------------------------------------------------------------- README.md, docs/any_cnn.md


def _default_drift(r: Record) -> tuple[str]:
    m = results(r)["metrics"]
    return (decades([m["drift/vs_fp64/deploy_rel_max"], m["drift/vs_fp64/train_rel_max"]]),)


def _any_cnn_minutes(r: Record) -> tuple[int, int]:
    walls = [run["wall_s"] for runs in results(r)["runs"].values() for run in runs.values()]
    return round_to(sum(walls) / 60, 5), r["machine"]["logical_cores"]


def _accuracies(r: Record, branches: str, split: str) -> list[float]:
    return [run["metrics"][f"deploy/{split}/acc"] for run in results(r)["runs"][branches].values()]


def _any_cnn_images(r: Record) -> tuple[str, int, str]:
    every = [a for b in results(r)["runs"] for s in ("test", "val") for a in _accuracies(r, b, s)]
    n = image_count(every)
    errors = max(round((1 - a) * n) for a in _accuracies(r, "none", "test"))
    return ("only a few" if errors <= 5 else "some"), n, f"{100 / n:.2f}"


def _within_spread(r: Record) -> bool:
    """Every branch set's accuracy range over seeds overlaps plain training's, on both splits."""
    for split in ("test", "val"):
        plain = _accuracies(r, "none", split)
        for branches in results(r)["runs"]:
            accs = _accuracies(r, branches, split)
            if min(accs) > max(plain) or max(accs) < min(plain):
                return False
    return True


def _mobileone_counts(r: Record) -> tuple[str, str]:
    from repvgg_lab.models import create_model, reparameterize
    from repvgg_lab.utils import count_params

    net = create_model("mobileone_s0")
    return f"{count_params(net):,}", f"{count_params(reparameterize(net)):,}"


STUDY_QUOTES = [
    Quote("README.md", "(both ~{} for fp32)", "default_run.json", _default_drift),
    Quote("docs/any_cnn.md", "(about {} minutes on {} cores)", "any_cnn.json", _any_cnn_minutes),
    Quote(
        "docs/any_cnn.md",
        "Plain training already misclassifies {} of the {} test images, and each image is worth "
        "{} points.",
        "any_cnn.json",
        _any_cnn_images,
    ),
    Quote(
        "docs/any_cnn.md",
        "On this data the accuracy differences are within the seed-to-seed spread",
        "any_cnn.json",
        holds=_within_spread,
    ),
    Quote(
        "docs/any_cnn.md",
        "sits at the fp32 floor of the branched net itself. The acceptance bound is 3×",
        "any_cnn.json",
        holds=lambda r: all(c["plain"] <= 3 * c["own"] for c in results(r)["conversion"]),
    ),
    Quote("docs/any_cnn.md", "({} / {} for S0)", None, _mobileone_counts),
]

# ---------------------------------------------------------------- docs/pruning.md


def _scores(r: Record, target: float, recalibrated: bool) -> dict[str, float]:
    """Test accuracy per criterion at a MAC target, with or without recalibration."""
    rows = results(r)["rows"]
    return {
        row["criterion"].removesuffix(" + recalibration"): row["acc"][0]
        for row in rows
        if row["target"] == target and row.get("recalibrated") is recalibrated
    }


def _unpruned(r: Record) -> float:
    return next(row["acc"][0] for row in results(r)["rows"] if row["criterion"] == "unpruned")


def _recalibration_rescues(r: Record) -> bool:
    before, after = _scores(r, 0.3, False), _scores(r, 0.3, True)
    return max(before.values()) <= 0.3 and min(after.values()) >= 0.9


def _l2_next_best(r: Record) -> bool:
    targets = {row["target"] for row in results(r)["rows"] if row["target"]}
    return all(
        (s := _scores(r, t, True))["l2_next, normalized"] >= s["l2"] for t in sorted(targets)
    )


def _target(r: Record, target: str) -> dict[str, Any]:
    return results(r)["summary"]["targets"][target]


PRUNING_QUOTES = [
    Quote(
        "docs/pruning.md",
        "a trained digits A0 by a weight score alone leaves a small fraction of its accuracy",
        "prune_scores.json",
        holds=lambda r: max(_scores(r, 0.3, False).values()) <= _unpruned(r) / 3,
    ),
    Quote(
        "docs/pruning.md",
        "Recalibration turns a pruned net from near chance into a usable one",
        "prune_scores.json",
        holds=_recalibration_rescues,
    ),
    Quote(
        "docs/pruning.md",
        "it works best with `l2_next` scores normalized per layer",
        "prune_scores.json",
        holds=_l2_next_best,
    ),
    Quote(
        "docs/pruning.md",
        "about {} minutes on an idle {}-core machine",
        "prune_study.json",
        lambda r: (round_to(results(r)["elapsed_s"] / 60, 5), r["machine"]["logical_cores"]),
    ),
    Quote(
        "docs/pruning.md",
        "the recalibrated −30 % nets keep most of their accuracy",
        "prune_study.json",
        holds=lambda r: (
            _target(r, "0.3")["prune/test/acc"]["mean"]
            >= 0.5 * results(r)["summary"]["baseline_test_acc"]["mean"]
        ),
    ),
    Quote(
        "docs/pruning.md",
        "After 20 epochs at λ = 1e-3 no gate reached 0",
        "prune_study.json",
        holds=lambda r: (
            (results(r)["settings"]["epochs"], results(r)["settings"]["sparsity"]) == (20, 1e-3)
            and _target(r, "0.0")["macs_reduction"]["mean"] == 0
        ),
    ),
]

# ---------------------------------------------------------------- docs/quantization.md


def _runs(r: Record, model: str) -> list[dict[str, Any]]:
    return [run for run in results(r)["runs"] if run["model"] == model]


def _drop(r: Record, model: str, variant: str) -> float:
    """Median over seeds of the int8 drop against the run's own fp32 accuracy, in points."""
    runs = _runs(r, model)
    return median(100 * (x["ptq"]["fp32"]["acc"] - x["ptq"][variant]["acc"]) for x in runs)


def _variants(r: Record, granularity: str = "") -> list[str]:
    names = results(r)["runs"][0]["ptq"]
    return [v for v in names if v != "fp32" and v.endswith(granularity)]


def _worst(r: Record, model: str, field: str) -> list[Any]:
    return [run["worst_layers"][0][field] for run in _runs(r, model)]


def _repvgg_losing(r: Record) -> tuple[int, int]:
    """(seeds whose per-tensor minmax int8 is below their fp32, seeds) of RepVGG-A0."""
    runs = _runs(r, "repvgg_a0")
    losing = [x for x in runs if x["ptq"]["minmax/per_tensor"]["acc"] < x["ptq"]["fp32"]["acc"]]
    return len(losing), len(runs)


def _repvgg_drop_pattern(r: Record) -> bool:
    """Nothing lost per channel (median); per tensor (minmax) some seeds lose."""
    per_channel = all(_drop(r, "repvgg_a0", v) <= 0 for v in _variants(r, "per_channel"))
    return per_channel and _repvgg_losing(r)[0] >= 1


def _qat_slightly_below(r: Record) -> bool:
    for model in ("repvgg_a0", "qarepvgg_a0"):
        runs = _runs(r, model)
        ptq = median(x["ptq"]["minmax/per_tensor"]["acc"] for x in runs)
        gap = ptq - median(x["qat"]["acc"] for x in runs)
        if not 0 < gap <= 0.02:
            return False
    return True


def _sqnr_gap(r: Record) -> bool:
    """QARepVGG's worst layers at least 6 dB above RepVGG's, their channel ranges tighter."""
    sqnr_gap = min(_worst(r, "qarepvgg_a0", "sqnr_db")) - max(_worst(r, "repvgg_a0", "sqnr_db"))
    ranges = max(_worst(r, "qarepvgg_a0", "channel_range_ratio")) < min(
        _worst(r, "repvgg_a0", "channel_range_ratio")
    )
    return sqnr_gap >= 6 and ranges


def _speed(r: Record, batch: int) -> float:
    return results(r)["speed"][f"quant/latency/b{batch}/int8_over_fp32"]


QUANT_QUOTES = [
    Quote(
        "docs/quantization.md",
        "QARepVGG-A0's int8 PTQ is within 1 point of its fp32 accuracy with every calibration "
        "method and both weight granularities (median over seeds)",
        "quant_study.json",
        holds=lambda r: all(_drop(r, "qarepvgg_a0", v) <= 1 for v in _variants(r)),
    ),
    Quote(
        "docs/quantization.md",
        "nothing per channel, and per tensor (minmax, the default calibration) a loss on {} of {} "
        "seeds",
        "quant_study.json",
        values=_repvgg_losing,
        holds=_repvgg_drop_pattern,
    ),
    Quote(
        "docs/quantization.md",
        "RepVGG-A0's worst layers under per-tensor weights have a far lower SQNR than "
        "QARepVGG-A0's",
        "quant_study.json",
        holds=_sqnr_gap,
    ),
    Quote(
        "docs/quantization.md",
        "(the stem, `features.0`, in {} seeds)",
        "quant_study.json",
        lambda r: (number_word(_worst(r, "repvgg_a0", "name").count("features.0")),),
    ),
    Quote(
        "docs/quantization.md",
        "QARepVGG's worst layers sit well above RepVGG's, with channel ranges much closer",
        "quant_study.json",
        holds=_sqnr_gap,
    ),
    Quote(
        "docs/quantization.md",
        "With per-tensor weights it ends slightly below the PTQ result on these nets",
        "quant_study.json",
        holds=_qat_slightly_below,
    ),
    Quote(
        "docs/quantization.md",
        "takes under half of fp32 ONNX Runtime's time at batch 8 and at batch 1",
        "quant_study.json",
        holds=lambda r: _speed(r, 8) < 0.5 and _speed(r, 1) < 0.5,
    ),
    Quote(
        "docs/quantization.md",
        "measures more than half at batch 8: the target is **missed** there",
        "benchmarks.json",
        holds=lambda r: results(r)["metrics"][keys.int8_ratio_key("repvgg_a0", 8)] > 0.5,
    ),
]

# ---------------------------------------------------------------- docs/rmnet.md


def _cost(r: Record, model: str, form: str) -> float:
    """MACs of one form over the BN-folded residual net's."""
    cost = results(r)["models"][model]["cost"]
    return cost[form]["macs"] / cost["bnfold"]["macs"]


def _latency(r: Record, model: str) -> list[dict[str, float]]:
    """Per batch size: each form's median time over bnfold's."""
    return [b["ratio"] for b in results(r)["models"][model]["latency"].values()]


def _noise_floor(r: Record) -> bool:
    """Every plain net within 3x of its source's fp32 error; uncapped ReLU6 100x beyond."""
    drifts = [d for m in results(r)["models"].values() for d in m.get("drift", [])]
    floor = all(d["fp32_deploy_rel_max"] <= 3 * d["fp32_train_rel_max"] for d in drifts)
    worst = max(d["fp32_deploy_rel_max"] for d in drifts)
    uncapped = [d["uncapped_fp64_rel_max"] for d in drifts if "uncapped_fp64_rel_max" in d]
    return floor and bool(uncapped) and min(uncapped) >= 100 * worst


RMNET_QUOTES = [
    Quote(
        "docs/rmnet.md",
        "at a fraction of the MACs of RMNet's own layout for ResNet-50 and MobileNetV2",
        "rmnet_cost.json",
        holds=lambda r: all(
            _cost(r, m, "plain") <= 0.5 * _cost(r, m, "rmnet")
            for m in ("rmnet_resnet50", "rmnet_mobilenet_v2")
        ),
    ),
    Quote(
        "docs/rmnet.md",
        "**ResNet-50: the plain form's ratio is well under RMNet's dense layout** (the `plain` and "
        "`rmnet` rows; the target was <= 5.5x)",
        "rmnet_cost.json",
        holds=lambda r: (
            _cost(r, "rmnet_resnet50", "plain")
            <= min(5.5, 0.5 * _cost(r, "rmnet_resnet50", "rmnet"))
        ),
    ),
    Quote(
        "docs/rmnet.md",
        "hence the smaller overall ratio in the table",
        "rmnet_cost.json",
        holds=lambda r: _cost(r, "rmnet_resnet50", "plain") < 5,
    ),
    Quote(
        "docs/rmnet.md",
        "on a CPU the plain nets are slower than the BN-folded residual nets",
        "rmnet_cost.json",
        holds=lambda r: all(x["plain"] > 1 for m in results(r)["models"] for x in _latency(r, m)),
    ),
    Quote(
        "docs/rmnet.md",
        "it makes ResNet-50's plain form faster than RMNet's layout, not faster than ResNet-50",
        "rmnet_cost.json",
        holds=lambda r: all(1 < x["plain"] < x["rmnet"] for x in _latency(r, "rmnet_resnet50")),
    ),
    Quote(
        "docs/rmnet.md",
        "The plain nets sit at the fp32 noise floor of the source itself. Without the cap at 6 "
        "the MobileNetV2 plain net is off by orders of magnitude more than round-off",
        "rmnet_cost.json",
        holds=_noise_floor,
    ),
]


QUOTES = [
    *STUDY_QUOTES,
    *BRANCH_COST_QUOTES,
    *PRUNING_QUOTES,
    *QUANT_QUOTES,
    *BENCHMARK_QUOTES,
    *PRECISION_QUOTES,
    *RMNET_QUOTES,
]
