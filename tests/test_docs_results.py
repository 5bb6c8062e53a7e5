"""The numbers the docs quote equal the committed results files that measured them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from repvgg_lab.results import generated_blocks, read_results, replace_generated
from repvgg_lab.studies.docs import RESULTS_DIR, doc_blocks, doc_files, render_block, render_docs
from repvgg_lab.studies.prose import Quote, all_quotes, check_quote, prose_problems

ROOT = Path(__file__).resolve().parents[1]
# The studies whose results the issue tracker requires on file (one results file each).
REQUIRED = ("default_run", "benchmarks", "gamma_sweep", "rmnet_cost", "prune_study_accuracy")


def _quoted_blocks() -> list[tuple[Path, str, str]]:
    return [
        (path, key, body)
        for path in doc_files(ROOT)
        for key, body in generated_blocks(path.read_text(encoding="utf-8")).items()
    ]


@pytest.mark.parametrize(
    ("path", "key", "body"),
    _quoted_blocks(),
    ids=lambda v: v.name if isinstance(v, Path) else (v if len(v) < 40 else ""),
)
def test_each_generated_block_equals_its_results_file(path: Path, key: str, body: str) -> None:
    assert body == render_block(ROOT, key), (
        f"{path.relative_to(ROOT)}: block {key!r} differs from docs/results; run "
        "python scripts/render_docs.py after regenerating the results"
    )


def test_every_registered_block_is_quoted_and_every_required_study_is_on_file() -> None:
    quoted = {key for _, key, _ in _quoted_blocks()}
    assert set(doc_blocks()) <= quoted
    assert set(REQUIRED) <= quoted


@pytest.mark.parametrize("key", sorted(doc_blocks()))
def test_results_files_record_command_date_and_machine(key: str) -> None:
    record = read_results(ROOT / RESULTS_DIR / doc_blocks()[key][0])
    assert ".py" in record["command"]  # the script that measured it
    assert record["date"][:2] == "20"
    assert record["machine"]["cpu"] and record["machine"]["torch"]


def test_render_docs_rewrites_a_stale_block_and_only_that(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / RESULTS_DIR).mkdir(parents=True)
    name = doc_blocks()["default_run"][0]
    (tmp_path / RESULTS_DIR / name).write_bytes((ROOT / RESULTS_DIR / name).read_bytes())
    readme = (
        "# x\n<!-- BEGIN GENERATED: default_run -->\nstale 0.5\n"
        "<!-- END GENERATED: default_run -->\n"
    )
    (tmp_path / "README.md").write_text(readme)
    (tmp_path / "docs" / "plain.md").write_text("no blocks here\n")
    assert render_docs(tmp_path, write=False) == [tmp_path / "README.md"]
    assert "stale" in (tmp_path / "README.md").read_text()  # --check writes nothing
    assert render_docs(tmp_path) == [tmp_path / "README.md"]
    text = (tmp_path / "README.md").read_text()
    assert generated_blocks(text)["default_run"] == render_block(ROOT, "default_run")
    assert render_docs(tmp_path) == []


def test_render_docs_can_rewrite_only_the_blocks_of_one_results_file(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / RESULTS_DIR).mkdir(parents=True)
    for name in ("rmnet_cost.json", "prune_scores.json"):
        (tmp_path / RESULTS_DIR / name).write_bytes((ROOT / RESULTS_DIR / name).read_bytes())
    (tmp_path / "README.md").write_text("no blocks\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "intro\n<!-- BEGIN GENERATED: rmnet_cost -->\nstale\n<!-- END GENERATED: rmnet_cost -->\n"
        "<!-- BEGIN GENERATED: prune_scores -->\nkept\n<!-- END GENERATED: prune_scores -->\n"
    )
    assert render_docs(tmp_path, results_file="rmnet_cost.json") == [page]
    blocks = generated_blocks(page.read_text())
    assert (
        blocks["rmnet_cost"] == render_block(ROOT, "rmnet_cost")
        and blocks["prune_scores"] == "kept"
    )
    with pytest.raises(ValueError, match="no doc block is rendered from 'nothing.json'"):
        render_docs(tmp_path, results_file="nothing.json")


def test_block_markers_are_parsed_and_replaced_exactly() -> None:
    text = "a\n<!-- BEGIN GENERATED: k -->\nold\n<!-- END GENERATED: k -->\nb\n"
    assert generated_blocks(text) == {"k": "old"}
    new = replace_generated(text, "k", "new\nlines")
    assert new == "a\n<!-- BEGIN GENERATED: k -->\nnew\nlines\n<!-- END GENERATED: k -->\nb\n"
    with pytest.raises(ValueError, match="no generated block 'other'"):
        replace_generated(text, "other", "x")
    with pytest.raises(ValueError, match="no end marker"):
        generated_blocks("<!-- BEGIN GENERATED: k -->\nx\n")


@pytest.mark.parametrize("quote", all_quotes(), ids=lambda q: f"{Path(q.doc).stem}: {q.text[:50]}")
def test_each_prose_quote_is_in_its_doc_and_true_of_its_results_file(quote: Quote) -> None:
    problem = check_quote(ROOT, quote)
    assert problem is None, problem


def _tampered(tmp_path: Path, name: str, change) -> None:
    """A copy of the docs and results under tmp_path, with results file `name` changed."""
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    path = tmp_path / RESULTS_DIR / name
    record = json.loads(path.read_text())
    change(record["results"])
    path.write_text(json.dumps(record))


def _worse_plain_run(r: dict) -> None:
    r["runs"]["none"]["0"]["metrics"]["deploy/test/acc"] = 0.9  # 27 of 270 wrong: not 269 images


def _onnx_target_met(r: dict) -> None:
    next(t for t in r["targets"] if "onnxruntime_over_eager" in t["key"])["holds"] = True


@pytest.mark.parametrize(
    ("name", "change", "stale"),
    [
        ("any_cnn.json", _worse_plain_run, "the 2690 test images"),
        ("prune_study.json", lambda r: r.update(elapsed_s=3600), "about 60 minutes"),
        ("benchmarks.json", _onnx_target_met, "at batch 1: MISSED"),
    ],
)
def test_a_results_file_that_changed_makes_its_prose_stale(tmp_path, name, change, stale) -> None:
    assert prose_problems(ROOT) == []
    _tampered(tmp_path, name, change)
    problems = prose_problems(tmp_path)  # every one of them names the changed file
    assert any(stale in p for p in problems) and all(name in p for p in problems), problems
