"""Every measured number in the study docs comes from a committed results file: each generated
block equals what its renderer makes of that file, and each file records how it was made."""

from pathlib import Path

import pytest

from repvgg_lab.results import generated_blocks, read_results
from repvgg_lab.studies import DOC_BLOCKS
from repvgg_lab.studies.common import render_docs

ROOT = Path(__file__).resolve().parents[2]
STUDY_DOCS = ("precision.md", "pruning.md", "rmnet.md")


def _blocks() -> dict[str, tuple[Path, str]]:
    found = {}
    for name in STUDY_DOCS:
        doc = ROOT / "docs" / name
        for key, body in generated_blocks(doc.read_text(encoding="utf-8")).items():
            found[key] = (doc, body)
    return found


@pytest.mark.parametrize("key", sorted(DOC_BLOCKS))
def test_block_equals_its_renderer_on_the_committed_results(key):
    blocks = _blocks()
    assert key in blocks, f"no generated block {key!r} in {', '.join(STUDY_DOCS)}"
    doc, body = blocks[key]
    file_name, render = DOC_BLOCKS[key]
    expected = render(read_results(ROOT / "docs" / "results" / file_name))
    assert body == expected.strip("\n"), f"{doc.name}: block {key!r} is stale; run its --render"


def test_every_block_in_the_study_docs_has_a_renderer():
    for name in STUDY_DOCS:
        keys = generated_blocks((ROOT / "docs" / name).read_text(encoding="utf-8"))
        assert keys and set(keys) <= set(DOC_BLOCKS), name


@pytest.mark.parametrize("file_name", sorted({f for f, _ in DOC_BLOCKS.values()}))
def test_results_file_records_command_date_and_machine(file_name):
    record = read_results(ROOT / "docs" / "results" / file_name)
    assert record["command"].startswith("python scripts/")
    assert record["date"].endswith("UTC") and record["machine"]["cpu"]
    assert record["results"]


def test_render_docs_rewrites_only_the_blocks_of_one_results_file(tmp_path):
    foreign = "<!-- BEGIN GENERATED: another tool's block, no end marker -->\n"
    (tmp_path / "other.md").write_text(foreign)
    doc = tmp_path / "page.md"
    doc.write_text(
        "intro\n<!-- BEGIN GENERATED: rmnet_cost -->\nstale\n<!-- END GENERATED: rmnet_cost -->\n"
        "<!-- BEGIN GENERATED: prune_scores -->\nkept\n<!-- END GENERATED: prune_scores -->\n"
    )
    assert render_docs("rmnet_cost.json", docs_dir=tmp_path) == [doc]
    blocks = generated_blocks(doc.read_text())
    expected = DOC_BLOCKS["rmnet_cost"][1](
        read_results(ROOT / "docs" / "results" / "rmnet_cost.json")
    )
    assert blocks["rmnet_cost"] == expected.strip("\n") and blocks["prune_scores"] == "kept"
    assert (tmp_path / "other.md").read_text() == foreign
    with pytest.raises(ValueError, match="no doc block"):
        render_docs("nothing.json", docs_dir=tmp_path)
