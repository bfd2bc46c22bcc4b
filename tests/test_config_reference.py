"""docs/configuration.md's reference tables are generated (scripts/config_reference.py) and committed up to date:
every group, every registered component, every key with its type and the default a user gets."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import config_reference as ref  # noqa: E402

from fedkd.config import RUN_SECTIONS  # noqa: E402
from fedkd.validation import COMPONENTS, load_run_config  # noqa: E402


@pytest.fixture(scope="module")
def block() -> str:
    return ref.render()


def _section(block: str, title: str) -> str:
    """The text of the ``####`` section whose heading starts with ``title``, up to the next heading."""
    start = block.index(f"\n{title}")
    return block[start: block.find("\n#", start + 1)]


def _row(section: str, key: str) -> list[str]:
    (line,) = [line for line in section.splitlines() if line.startswith(f"| `{key}` |")]
    return [cell.strip() for cell in line.strip("|").split(" | ")]


def test_the_committed_reference_is_the_generated_one(block):
    committed = ref.DOC.read_text()
    assert ref.with_block(committed, block) == committed, (
        "docs/configuration.md's reference tables are stale: run `make config-reference` and commit the result")


def test_every_registered_component_and_each_of_its_keys_has_a_row(block):
    for group, registry in COMPONENTS.items():
        for name in registry:
            sections = [s for s in block.split("\n#### ")[1:] if f"`{group}" in s.split("\n")[0]]
            own = [s for s in sections if s.startswith((f"`{group}={name}`", f"`{group}.{registry.key}={name}`"))]
            assert own, f"{group} {name!r} has no section"
            keys = {f.name for f in dataclasses.fields(registry.params(name))} - {registry.key}
            assert {k for k in keys if f"| `{k}` |" not in own[0]} == set()
    for group, cls in RUN_SECTIONS.items():
        prefix = "" if (ref.CONF_DIR / group).is_dir() else f"{group}."
        assert all(f"| `{prefix}{f.name}` |" in block for f in dataclasses.fields(cls))


def test_defaults_are_what_the_composed_config_gives(block):
    """The teacher default is conf/config.yaml's choice, and each key's default is what that choice composes to,
    the preset's own values over those of the file it builds on."""
    cfg = load_run_config([])
    (summary,) = [line for line in block.splitlines() if line.startswith("| [`teacher`]")]
    assert f"| `{cfg.teacher.objective}` |" in summary and cfg.teacher.objective == "dfr"
    assert "`reliability`" in [line for line in block.splitlines() if line.startswith("| [`aggregator`]")][0]
    preset = _section(block, "#### `aggregator=agre_fed`")
    assert preset.startswith("\n#### `aggregator=agre_fed`: a preset of `agre` (default)")
    assert _row(preset, "biased")[2] == f"`{cfg.aggregator.biased}`" == "`mean_bases`"
    assert _row(_section(block, "#### `aggregator=agre`"), "biased")[2] == "`random_client`"
    assert _row(_section(block, "#### `dataset=celeba`"), "test_per_class")[2] == "`180`"
    assert _row(_section(block, "#### `federation=default`"), "min_clients")[2] == "`${.num_clients}`"


def test_types_rules_and_meanings_come_from_the_code_and_the_yaml(block):
    gnmax = _section(block, "#### `privacy=gnmax`")
    assert _row(gnmax, "threshold")[1] == "`float \\| None`"
    assert _row(gnmax, "threshold")[4].startswith("T: answer only when")  # the YAML comment
    reliability = _section(block, "#### `aggregator=reliability`")
    assert _row(reliability, "bias_reference")[3] == "one of `mean`, `reliability`"
    assert _row(reliability, "power")[3] == "must be >= 0"
    assert "compression=topk" in _row(_section(block, "#### `query=all`"), "top_k")[4]
    assert "`topk`" in _row(_section(block, "#### `query=all`"), "compression")[3]  # the registry's names


def test_yaml_comments_follow_nesting_defaults_entries_and_continued_lines(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text("# @package _global_\n# What this file is,\n# in two lines.\ndefaults:\n"
                    "  - teacher: dfr   # the teacher\n  - _self_\nplain: 1\nseed: 0   # the seed\n"
                    "baselines:\n  ensemble: true   # the ensemble\n  one_hot: false\n"
                    "mode: fast   # fast or\n              # slow\nnext: 2\n# a note, not a continuation\n")
    header, comments = ref.yaml_comments(path)
    assert header == "What this file is, in two lines."
    assert comments == {"teacher": "the teacher", "seed": "the seed", "baselines.ensemble": "the ensemble",
                        "mode": "fast or slow"}


def test_the_check_fails_on_a_stale_block_and_leaves_the_file(tmp_path, monkeypatch, block, capsys):
    doc = tmp_path / "configuration.md"
    stale = f"# Configuration\n\nprose\n\n{ref.BEGIN}\n| `seed` | `int` | `1` |\n{ref.END}\n\n## after\n"
    doc.write_text(stale)
    monkeypatch.setattr(ref, "DOC", doc)
    monkeypatch.setattr(ref, "ROOT", tmp_path)
    monkeypatch.setattr(ref, "render", lambda: block)
    assert ref.main(["--check"]) == 1
    assert "make config-reference" in capsys.readouterr().err and doc.read_text() == stale
    assert ref.main([]) == 0
    assert doc.read_text() == f"# Configuration\n\nprose\n\n{block}\n\n## after\n"
    assert ref.main(["--check"]) == 0
