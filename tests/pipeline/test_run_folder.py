"""A command refused inside its job (after Hydra made the run folder) leaves no new folder; a
folder that was there before the command is kept as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from repvgg_lab.fileio import missing_folders, remove_created
from tests.helpers.cli import run_script

REFUSED_IN_THE_JOB = {
    "bad ckpt_path": (["ckpt_path=nowhere.ckpt"], "ckpt_path=nowhere.ckpt: no such checkpoint"),
    "trainer=gpu without a GPU": (["trainer=gpu"], "trainer.accelerator=gpu needs a GPU"),
}


def _refused(*argv: str, message: str) -> None:
    """`python train.py ARGV` ends in one line naming the problem and exit status 2."""
    result = run_script("train.py", *argv, "logger=none", timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


@pytest.mark.parametrize(("argv", "message"), REFUSED_IN_THE_JOB.values(), ids=REFUSED_IN_THE_JOB)
def test_a_refused_run_leaves_no_new_folder(tmp_path: Path, argv: list[str], message: str):
    if "trainer=gpu" in argv and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: trainer=gpu is not refused")
    _refused(*argv, f"hydra.run.dir={tmp_path / 'outputs' / 'train' / 'run'}", message=message)
    assert list(tmp_path.iterdir()) == []


def test_a_refused_sweep_leaves_no_new_folder(tmp_path: Path) -> None:
    argv = ["-m", "seed=1,2", "ckpt_path=nowhere.ckpt", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    _refused(*argv, message="no such checkpoint")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_was_there_is_kept(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's own file\n")
    _refused("ckpt_path=nowhere.ckpt", f"hydra.run.dir={mine}", message="no such checkpoint")
    assert (mine / "notes.txt").read_text() == "the user's own file\n"


def test_only_new_folders_with_nothing_else_in_them_are_removed(tmp_path: Path) -> None:
    created = missing_folders(tmp_path / "a" / "b" / "c")
    assert created == [tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"]
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "multirun.yaml").write_text("hydra's\n")
    (tmp_path / "a" / "other").mkdir()  # something else landed in a: a stays
    assert remove_created(created, {"multirun.yaml"}) == created[:0:-1]
    assert [p.name for p in tmp_path.iterdir()] == ["a"]
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["other"]
