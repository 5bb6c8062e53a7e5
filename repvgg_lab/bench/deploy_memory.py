"""Peak memory and wall time of `python deploy.py ... quantize=int8` on an ImageNet-style tree, as
the validation split and the calibration batches grow.

Each configuration is one deploy in a fresh interpreter, spawned by a small one (see `measure`);
its peak resident set size is read exactly from `os.wait4`, its wall time around it. ru_maxrss
is the largest of the child and the processes it reaped, not their sum: loader workers are not
added in (pass
the override `verify.workers=0`, where deploy has that option, to keep the images in one process).
The trees (root/train/cNNN/*.jpg, root/val/cNNN/*.jpg) are generated with
`data_loading.synthetic_image` (ImageNet-sized JPEGs of about 110 kB), one per validation size;
they share their training images (hard links) and the smaller validation split is a subset of
the larger one. The checkpoint is a freshly initialised, seeded repvgg_a0 with 10 classes.
Constant memory means: a 4x larger split or 4x more calibration batches leave the peak RSS within
10 % (`rss_growth_ok`) and the wall time at most linear, within 10 % (`time_linear_ok`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from repvgg_lab.bench.data_loading import SIZES, synthetic_image
from repvgg_lab.bench.machine import CpuWindow
from repvgg_lab.data.sampling import seeded_rng
from repvgg_lab.models import create_model, save_weights
from repvgg_lab.results import write_results

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]  # where deploy.py lives
MODEL, CLASSES, QUALITY = "repvgg_a0", 10, 90
METRIC_KEYS = (
    "quant/int8/val/acc",
    "quant/int8/images",
    "quant/int8/calibration_images",
    "verify/images",
)
RSS_LIMIT, TIME_SLACK, BATCH = 1.10, 1.10, 8
# name: (large val split?, large calibration?, method, the configuration it is compared with)
CONFIGS = {
    "base": (0, 0, "minmax", None),
    "val_large": (1, 0, "minmax", "base"),
    "calibration_large": (0, 1, "minmax", "base"),
    "percentile_base": (0, 0, "percentile", None),
    "percentile_calibration_large": (0, 1, "percentile", "percentile_base"),
}


def write_split(
    folder: Path, counts: list[int], split: int, seed: int = 0, size: tuple[int, int] | None = None
) -> int:
    """folder/cNNN/NNNN.jpg, counts[c] images of class c, each a function of (seed, split, c, i)
    (so a smaller split is a subset of a larger one); `size` (w, h) overrides ImageNet's sizes."""
    done = 0
    for c, n in enumerate(counts):
        (folder / f"c{c:03d}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image = synthetic_image(seeded_rng(seed, split, c, i), *(size or SIZES[i % len(SIZES)]))
            image.save(folder / f"c{c:03d}" / f"{i:04d}.jpg", format="JPEG", quality=QUALITY)
            done += 1
    return done


def spread(total: int, classes: int = CLASSES) -> list[int]:
    """`total` images over `classes` classes, as evenly as possible."""
    return [total // classes + (c < total % classes) for c in range(classes)]


def build_trees(
    workdir: Path, val_sizes: list[int], train_images: int, size: tuple[int, int] | None = None
) -> dict[int, Path]:
    """One tree per validation size under `workdir` (kept and reused when complete), sharing
    one set of training images (hard links); returns {val size: root}."""
    per_class = math.ceil(train_images / CLASSES)
    trees = workdir / (f"{size[0]}x{size[1]}" if size else "imagenet_sizes")
    train, roots = trees / f"train{per_class * CLASSES}", {}
    if not (train / ".done").is_file():
        write_split(train, [per_class] * CLASSES, 0, size=size)
        (train / ".done").touch()
    for n in val_sizes:
        root = roots[n] = trees / f"val{n}_{train.name}"
        if (root / ".done").is_file():
            continue
        shutil.rmtree(root, ignore_errors=True)
        for src in sorted(train.rglob("*.jpg")):
            dst = root / "train" / src.relative_to(train)
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
        write_split(root / "val", spread(n), 1, size=size)
        (root / ".done").touch()
    return roots


def write_checkpoint(path: Path, seed: int = 0) -> Path:
    """A freshly initialised repvgg_a0 (10 classes, seeded) as safetensors naming its model."""
    torch.manual_seed(seed)
    net = create_model(MODEL, num_classes=CLASSES)
    return save_weights(net, path, {"model_name": MODEL, "num_classes": CLASSES})


def deploy_command(
    ckpt: Path, root: Path, val: int, cb: int, method: str, run_dir: Path, size: int, threads: int,
    extra: Sequence[str] = (),
) -> list[str]:  # fmt: skip
    """The deploy.py command line of one configuration (no latency, no W&B, files in run_dir),
    then the `extra` overrides (e.g. `verify.workers=0`)."""
    return [
        sys.executable, "deploy.py", f"ckpt={ckpt}", "verify.data=imagenet", f"verify.root={root}",
        f"verify.batch={BATCH}", f"input_size={size}", "quantize=int8",
        f"quantize.calibration_batches={cb}", f"quantize.method={method}",
        "latency.batch_sizes=[]", f"threads={threads}", "logger=none",
        f"out_dir={run_dir / 'out'}", f"hydra.run.dir={run_dir / 'hydra'}", *extra,
    ]  # fmt: skip


# Linux keeps the largest RSS a process's memory ever had, across exec too, so a child forked
# from a large process (this one, or pytest) would report at least its parent's size. A small
# interpreter in between spawns the command and reads the command's own peak with wait4.
_SPAWN = (
    "import json, os, sys; pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ); "
    "_, status, usage = os.wait4(pid, 0); "
    "open(sys.argv[1], 'w').write(json.dumps([os.waitstatus_to_exitcode(status), "
    "usage.ru_maxrss]))"
)


def measure(command: list[str], log_path: Path, threads: int = 1) -> dict[str, Any]:
    """Run `command` (its first item the executable's path) in the repository root; its peak RSS
    (MiB, exact: wait4 in a small spawning interpreter), wall time and the machine's load
    meanwhile. A failure raises RuntimeError with the log's tail."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "offline"}
    status_path = log_path.with_name(log_path.name + ".rusage")
    spawner = [sys.executable, "-c", _SPAWN, str(status_path), *command]
    with open(log_path, "wb") as log, CpuWindow() as window:
        start = time.perf_counter()
        subprocess.run(spawner, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
        wall = time.perf_counter() - start
    code, maxrss_kib = json.loads(status_path.read_text())
    if code != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"exit {code}: {' '.join(command)}\n{log_path}:\n{tail}")
    return {"peak_rss_mib": maxrss_kib / 1024, "wall_s": wall, "cpu": window.record()}


def ratios(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each grown configuration over its base: RSS and wall-time ratios and their verdicts; the
    wall-time limit is the growth factor (e.g. 4 for 4x the images) plus 10 %."""
    out = {}
    for name, (*_, base) in CONFIGS.items():
        if base is None:
            continue
        grows = "val_images" if runs[name]["val_images"] != runs[base]["val_images"] else None
        grows = grows or "calibration_batches"
        factor = runs[name][grows] / runs[base][grows]
        rss = runs[name]["peak_rss_mib"] / runs[base]["peak_rss_mib"]
        wall = runs[name]["wall_s"] / runs[base]["wall_s"]
        out[name] = {
            "over": base, "grows": grows, "factor": factor, "rss_ratio": rss, "wall_ratio": wall,
            "rss_limit": RSS_LIMIT, "wall_limit": factor * TIME_SLACK,
            "rss_growth_ok": rss <= RSS_LIMIT, "time_linear_ok": wall <= factor * TIME_SLACK,
        }  # fmt: skip
    return out


def run_deploy_memory(
    val_sizes: tuple[int, int] = (100, 400),
    calibration_batches: tuple[int, int] = (4, 16),
    input_size: int = 224,
    workdir: Path | None = None,
    threads: int = 1,
    image_size: tuple[int, int] | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Every configuration of CONFIGS, measured; JSON-ready results (settings, runs, ratios).
    `workdir` keeps the trees, checkpoint and run folders (default: a temporary folder);
    `overrides` are added to every deploy's command line."""
    if min(val_sizes) < CLASSES:  # ImageFolder refuses a class folder without images
        raise ValueError(f"val_sizes {val_sizes}: every split needs >= {CLASSES} images")
    with tempfile.TemporaryDirectory(prefix="repvgg_lab_deploy_memory_") as tmp:
        work = Path(workdir or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        roots = build_trees(
            work / "trees", list(val_sizes), max(calibration_batches) * BATCH, image_size
        )
        trees_s = time.perf_counter() - start
        ckpt = write_checkpoint(work / "repvgg_a0_10.safetensors")
        runs = {}
        for name, (large_val, large_cb, method, _) in CONFIGS.items():
            val, cb = val_sizes[large_val], calibration_batches[large_cb]
            run_dir = work / "runs" / name
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            cmd = deploy_command(
                ckpt, roots[val], val, cb, method, run_dir, input_size, threads, overrides
            )
            result = measure(cmd, run_dir / "deploy.log", threads)
            log.info(
                "%s: peak RSS %.0f MiB, %.1f s", name, result["peak_rss_mib"], result["wall_s"]
            )
            metrics = json.loads((run_dir / "out" / "metrics.json").read_text())
            runs[name] = {
                "val_images": val,
                "calibration_batches": cb,
                "method": method,
                "command": shlex.join(["python", *cmd[1:]]),
                **result,
                "metrics": {key: metrics.get(key) for key in METRIC_KEYS},
            }
    settings = dict(model=MODEL, classes=CLASSES, val_sizes=list(val_sizes), verify_batch=BATCH)
    settings.update(calibration_batches=list(calibration_batches), input_size=input_size)
    settings.update(threads=threads, image_size=image_size, overrides=list(overrides))
    settings["trees_s"] = trees_s
    return {"settings": settings, "runs": runs, "ratios": ratios(runs)}


def write_deploy_memory(path: str | Path, results: dict[str, Any], threads: int = 1) -> Path:
    """The results file: `results` with the command, the date and the machine."""
    return write_results(path, results, threads=threads)
