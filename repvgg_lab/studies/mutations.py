"""The promises the test suite must keep, each as a change that must fail its tests.

Every test added for a promise adds its mutation here; `python scripts/mutation_check.py` runs
them (docs/testing.md)."""

from __future__ import annotations

from repvgg_lab.studies.mutation import Mutation

_MODULE_HOOK = "    def on_fit_start(self) -> None:\n"
_ON_LOAD = "    def on_load_checkpoint(self, checkpoint):\n"

MUTATIONS = [
    Mutation(
        "resume drops the checkpoint's weights",
        "repvgg_lab/lit/module.py",
        _MODULE_HOOK,
        _ON_LOAD + "        checkpoint['state_dict'] = dict(self.state_dict())\n\n" + _MODULE_HOOK,
        ("tests/pipeline/test_kill_resume.py",),
    ),
    Mutation(
        "resume zeroes SGD's momentum buffers",
        "repvgg_lab/lit/module.py",
        _MODULE_HOOK,
        _ON_LOAD
        + "        for s in checkpoint['optimizer_states'][0]['state'].values():\n"
        + "            s['momentum_buffer'].zero_()\n\n"
        + _MODULE_HOOK,
        ("tests/pipeline/test_kill_resume.py",),
    ),
    Mutation(
        "the training order draws from the global RNG (a resumed run reshuffles)",
        "repvgg_lab/data/sampling.py",
        "enumerate(super().__iter__())",
        "enumerate(torch.randperm(n).tolist())",
        ("tests/pipeline/test_kill_resume.py",),
    ),
    Mutation(
        "every epoch repeats the first epoch's crops (sample seeds ignore the epoch)",
        "repvgg_lab/data/sampling.py",
        "seeded_rng(self.seed, self.epoch)",
        "seeded_rng(self.seed, 0)",
        ("tests/data",),
    ),
    Mutation(
        "augmentation draws from the global RNG, not the sample's seed",
        "repvgg_lab/data/sampling.py",
        "            torch.manual_seed(seed)\n",
        "            pass\n",
        ("tests/pipeline/test_kill_resume.py",),
    ),
    Mutation(
        "the EMA is never updated",
        "repvgg_lab/lit/ema.py",
        "avg.lerp_(new.detach(), 1.0 - d)",
        "pass",
        ("tests/lit",),
    ),
    Mutation(
        "fused bias off by 1e-7 relative",
        "repvgg_lab/reparam/fuse.py",
        "        out[1].copy_(bias)",
        "        out[1].copy_(bias * (1 + 1e-7))",
        ("tests/reparam", "tests/models"),
    ),
    Mutation(
        "new branches start with BN gamma = 1 (add_branches changes the function)",
        "repvgg_lab/models/branched.py",
        "                last.weight.zero_()\n",
        "                last.weight.fill_(1.0)\n",
        ("tests/models",),
    ),
    Mutation(
        "int8 per-layer report ranks the best layer first (SQNR ranking reversed)",
        "repvgg_lab/quant/diagnose.py",
        'rows.sort(key=lambda r: r["sqnr_db"])',
        'rows.sort(key=lambda r: -r["sqnr_db"])',
        ("tests/quant",),
    ),
    Mutation(
        "EMA warmup ignored (the full decay from the first step)",
        "repvgg_lab/lit/ema.py",
        "        if not self.warmup:\n",
        "        if True:\n",
        ("tests/lit",),
    ),
    Mutation(
        "EMA update count not checkpointed",
        "repvgg_lab/lit/ema.py",
        'ckpt["ema_updates"] = self.updates',
        'ckpt["ema_updates"] = 0',
        ("tests/lit",),
    ),
    Mutation(
        "ema/<split>/acc measured with the raw weights",
        "repvgg_lab/lit/ema.py",
        "evaluate_like_trainer(self.net, trainer",
        "evaluate_like_trainer(pl_module.net, trainer",
        ("tests/lit",),
    ),
    Mutation(
        "a run resumed mid-epoch replays the epoch's first batches",
        "repvgg_lab/data/sampling.py",
        "            skip = self.resume_at[1]\n",
        "            skip = 0\n",
        ("tests/data", "tests/pipeline/test_kill_resume.py"),
    ),
    Mutation(
        "perf/data_wait counts no waiting",
        "repvgg_lab/lit/progress.py",
        "self._wait += time.perf_counter() - self._mark",
        "self._wait += 0.0",
        ("tests/lit",),
    ),
    Mutation(
        "trainer=gpu without CUDA reaches Lightning (no one-line refusal)",
        "repvgg_lab/pipeline/train.py",
        "    if accelerator in found and not found[accelerator]:\n",
        "    if False:\n",
        ("tests/pipeline/test_run_folder.py",),
    ),
    Mutation(
        "a refused command keeps the run folder it created",
        "repvgg_lab/pipeline/run_folder.py",
        "        if exit_.code == REFUSED:\n",
        "        if False:\n",
        ("tests/pipeline/test_run_folder.py", "tests/deploy/test_cli.py"),
    ),
    Mutation(
        "depthwise DBB gets a 1x1 branch (not the published block)",
        "repvgg_lab/models/geometry.py",
        'DBB_DEPTHWISE = ("kxk", "avg", "1x1_kxk")',
        'DBB_DEPTHWISE = ("kxk", "1x1", "avg", "1x1_kxk")',
        ("tests/models",),
    ),
    Mutation(
        "DBB's 1x1 -> kxk first conv trains the whole kernel (not identity-based)",
        "repvgg_lab/models/online.py",
        "        self.identity_based = not pool and mid == g.in_channels\n",
        "        self.identity_based = False\n",
        ("tests/models",),
    ),
    Mutation(
        "online pooling branch without its scale",
        "repvgg_lab/models/online.py",
        "        return Term(kernel, s, None, offset)\n",
        "        return Term(kernel, None, None, offset)\n",
        ("tests/models",),
    ),
    Mutation(
        "resize_imagefolder enlarges small images",
        "repvgg_lab/data/resize.py",
        "    if scale >= 1:\n",
        "    if scale >= 10:\n",
        ("tests/data/test_resize.py",),
    ),
    Mutation(
        "resize_imagefolder redoes what a killed run finished (no resume)",
        "repvgg_lab/data/resize.py",
        "        if out in existing:\n",
        "        if False:\n",
        ("tests/data/test_resize.py",),
    ),
    Mutation(
        "resize_imagefolder leaves a killed run's temporary files behind",
        "repvgg_lab/data/resize.py",
        "        if _is_leftover(name, outputs):\n",
        "        if False:\n",
        ("tests/data/test_resize.py",),
    ),
    Mutation(
        "resize_imagefolder keeps palette and CMYK modes (no RGB conversion)",
        "repvgg_lab/data/resize.py",
        '        rgb = img.convert("RGB")\n',
        "        rgb = img.copy()\n",
        ("tests/data/test_resize.py",),
    ),
    Mutation(
        "quantize.method ignored (MinMax always)",
        "repvgg_lab/quant/ptq.py",
        '"calibrate_method": _calibration_method(options.method),',
        '"calibrate_method": _calibration_method("minmax"),',
        ("tests/quant", "tests/deploy"),
    ),
    Mutation(
        "quantize.per_channel ignored (per tensor always)",
        "repvgg_lab/quant/ptq.py",
        '"per_channel": options.per_channel,',
        '"per_channel": False,',
        ("tests/quant", "tests/deploy"),
    ),
    Mutation(
        "calibration reads only its first batch",
        "repvgg_lab/quant/calibration.py",
        "        for batch in batches:\n",
        "        for batch in list(batches)[:1]:\n",
        ("tests/quant", "tests/deploy"),
    ),
    Mutation(
        "calibration keeps every batch's activations until the last (memory grows)",
        "repvgg_lab/quant/ptq.py",
        '        "CalibStridedMinMax": 1,\n',
        "",
        ("-m", "slow", "tests/quant/test_streaming.py"),
    ),
    Mutation(
        "the streamed evaluator counts only the last batch",
        "repvgg_lab/runtime/stream.py",
        "tally.correct += int(",
        "tally.correct = int(",
        ("tests/runtime", "tests/deploy/test_int8.py"),
    ),
    Mutation(
        "the streamed evaluator forgets earlier batches' largest error",
        "repvgg_lab/runtime/stream.py",
        "tally.max_err = _nanmax(tally.max_err, err)",
        "tally.max_err = err",
        ("tests/runtime",),
    ),
    Mutation(
        "a validation folder serving as test is read twice",
        "repvgg_lab/deploy/verify.py",
        'if not (split == "test" and n in vals and module.same_samples("test", "val"))',
        "if True",
        ("tests/data/test_imagenet.py",),
    ),
    Mutation(
        "every CPU is taken for a VNNI one (int8 inexact where the CPU lacks it)",
        "repvgg_lab/runtime/runner.py",
        "    return bool(VNNI_FLAGS & set(flags.split()))",
        "    return True",
        ("tests/deploy/test_int8.py",),
    ),
    Mutation(
        "the per-layer report keeps only the last batch's error sums",
        "repvgg_lab/quant/diagnose.py",
        "(noise, signal) if old is None else (old[0] + noise, old[1] + signal)",
        "(noise, signal)",
        ("tests/quant/test_streaming.py",),
    ),
]
