"""The GPU check's code path, run on the CPU (its dry run): the same JSON a GPU run writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from repvgg_lab.bench import keys as k
from repvgg_lab.bench.gpu_check import DRY_RUN, run_gpu_check
from tests.helpers.cli import REPO


def test_dry_run_measures_every_training_mode_and_tf32_drift() -> None:
    metrics = run_gpu_check("cpu", DRY_RUN)["metrics"]
    for mode in ("fp32", "bf16_cl", "bf16_cl_compiled"):
        assert metrics[k.gpu_train_key("repvgg_a0", mode)] > 0, mode
    off = metrics[k.tf32_key("repvgg_a0", "deploy_rel_max_tf32_off")]
    on = metrics[k.tf32_key("repvgg_a0", "deploy_rel_max_tf32_on")]
    own = metrics[k.tf32_key("repvgg_a0", "train_rel_max")]
    assert off == on  # TF32 does not exist on a CPU: the switch must change nothing here
    assert 0 < off <= 3 * own + 1e-6  # and the conversion sits at the fp32 floor
    # The bf16 branch-cost line: online DBB keeps fewer activations than offline DBB.
    size = DRY_RUN.branch_sizes[0]
    cost = {
        mode: metrics[
            k.branch_cost_key(
                "tv_resnet18", "dbb", mode, f"memory_over_plain_{size}px_bfloat16_cpu"
            )
        ]
        for mode in ("offline", "online")
    }
    assert 0 < cost["online"] < cost["offline"]


def test_asking_for_cuda_without_it_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        run_gpu_check("cuda", DRY_RUN)


@pytest.mark.slow
def test_the_shell_script_dry_run_writes_one_results_file(tmp_path: Path) -> None:
    # The script calls `python`: the interpreter running these tests.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    subprocess.run(
        ["bash", str(REPO / "scripts/gpu_check.sh"), str(tmp_path), "--dry-run"],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=600,
        env={**os.environ, "PATH": path, "PYTHONPATH": str(REPO)},
    )
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert record["results"]["dry_run"] is True and record["machine"]["torch"]
    assert record["command"].startswith("python scripts/gpu_check.py")
