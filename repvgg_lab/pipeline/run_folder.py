"""A refused command leaves no folder behind.

Hydra creates a job's run folder (and writes `.hydra/` and the job's log there) before the job
starts, so a job refused for bad input (`common.user_errors`: one line, exit status 2) would
leave an empty-looking `outputs/<task>/<time>/`. `RunFolder`, a Hydra callback (the configs'
`hydra.callbacks`), notes before Hydra creates anything which folders of the run do not exist
yet, and which job is running; `removed_if_refused` then removes the refused job's folder if this
run created it, and the run's new parent folders that nothing else landed in. A folder that
existed before the command (a reused `hydra.run.dir`, a sweep's earlier jobs) is left alone."""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from repvgg_lab.fileio import missing_folders, remove_created

log = logging.getLogger(__name__)

REFUSED = 2  # the exit status of a refusal (common.user_errors)
# What Hydra itself writes into a sweep folder beside the jobs' folders.
HYDRA_FILES = ("multirun.yaml",)


@dataclass
class _Run:
    """This process's Hydra run: the folders it creates (outermost first), the running job's."""

    created: list[Path] = field(default_factory=list)
    job: Path | None = None


_RUN = _Run()


def _note(config: DictConfig, key: str) -> None:
    # Hydra reads the same key again when it creates the folder; `${now:...}` is cached in the
    # config, so both readings give one time stamp.
    try:
        folder = OmegaConf.select(config, key, throw_on_missing=True)
    except OmegaConfBaseException:
        folder = None  # a folder we cannot name is never removed
    _RUN.created = missing_folders(str(folder)) if folder is not None else []
    _RUN.job = None


class RunFolder(Callback):
    """Notes the run's folders before Hydra creates them (see the module's docstring)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _note(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _note(config, "hydra.sweep.dir")

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        _RUN.job = Path(config.hydra.runtime.output_dir)

    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        _RUN.job = None  # the job returned (or raised a bug): its folder stays


def _close_logs_in(folder: Path) -> None:
    """Close the logging file handlers writing into `folder` (Hydra's `<job>.log`)."""
    for logger in (logging.getLogger(), *logging.Logger.manager.loggerDict.values()):
        for handler in list(getattr(logger, "handlers", [])):
            path = getattr(handler, "baseFilename", None)
            if path is not None and folder in Path(path).parents:
                handler.close()
                logger.removeHandler(handler)


def remove_refused_job() -> list[Path]:
    """Remove the running job's folder if this run created it, then each new parent folder
    left with nothing but Hydra's own files; returns the removed folders."""
    job, created = _RUN.job, _RUN.created
    if job is None or not created or not (job == created[0] or created[0] in job.parents):
        return []  # no job ran, or its folder existed before this run
    _close_logs_in(job)
    shutil.rmtree(job)
    above = [f for f in created if f in job.parents]
    removed = [job, *remove_created(above, HYDRA_FILES)]
    log.debug("refused: removed %s", ", ".join(map(str, removed)))
    return removed


@contextlib.contextmanager
def removed_if_refused() -> Iterator[None]:
    """Run a Hydra command; if it ends in a refusal, remove the folders the run created."""
    _RUN.created, _RUN.job = [], None
    try:
        yield
    except SystemExit as exit_:
        if exit_.code == REFUSED:
            remove_refused_job()
        raise
