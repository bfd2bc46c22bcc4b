"""docs/configuration.md's reference tables, generated from the registries and conf/: every top-level key, every
config group with its choices, and for every choice each key with its type, the default a user gets, its rule
and what it means. The block between ``<!-- config-reference:begin -->`` and ``<!-- config-reference:end -->`` is
rewritten; the prose around it is hand-written.

    python scripts/config_reference.py          # rewrite the block (make config-reference)
    python scripts/config_reference.py --check  # exit 1 when the committed block is stale (the test suite)

Where a value comes from: the default is what Hydra composes for ``<group>=<choice>`` (the choice's YAML file,
with the presets it builds on), else the parameter dataclass's default; the type is the field's annotation; the
rule is the field's metadata; the meaning is the YAML file's comment on the key, else the comment on the field in
its dataclass. A choice is described by its YAML file's leading comment, else by its component's docstring.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import io
import re
import sys
import textwrap
import tokenize
from pathlib import Path
from typing import Any, get_type_hints

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "configuration.md"
BEGIN = "<!-- config-reference:begin -->"
END = "<!-- config-reference:end -->"
COMMAND = "make config-reference"

sys.path.insert(0, str(ROOT))

from fedkd.conf_dir import CONF_DIR  # noqa: E402
from fedkd.config import DEVICE_PATTERN, ENGINES, RUN_SECTIONS, RunConfig  # noqa: E402
from fedkd.field_types import declared_default, field_types, spell  # noqa: E402
from fedkd.validation import COMPONENTS, MAX_SEED, NAME_PATTERN, REFERENCED  # noqa: E402

GROUPS = (*COMPONENTS, *(s for s in RUN_SECTIONS if (CONF_DIR / s).is_dir()))  # baselines is a section only
# Hand-written: what a group is for, and where it is explained at length.
GROUP_NOTES = {
    "dataset": "The benchmark: its splits, groups and files ([datasets-and-models.md](datasets-and-models.md)). "
               "`test_per_class` and `val_per_class` count images per group for waterbirds and celeba.",
    "partition": "How the client pool is split across the clients.",
    "teacher": "Each client's local objective; its `epochs` are local epochs per round, and a teacher keeps "
               "training across rounds ([methods.md](methods.md)).",
    "aggregator": "How the server turns the teachers' soft labels into distillation targets and per-example "
                  "weights ([methods.md](methods.md)).",
    "student": "The server's distillation objective; its `epochs` are distillation epochs over the queried transfer "
               "pool per round ([methods.md](methods.md)).",
    "query": "Which transfer points are asked about each round, and how the soft labels travel back. A budget "
             "(`per_round`, `total`) is a fraction of the transfer pool when ≤ 1 and a count of points when > 1.",
    "privacy": "Privacy mechanisms, their units and their accounting ([privacy.md](privacy.md)).",
    "federation": "The federation's size and rounds, and what each simulated client is given.",
}
# Hand-written: what a top-level key's YAML comment leaves out (links, consequences).
TOP_LEVEL_NOTES = {
    "seed": "seeds every random draw of the run ([reproducibility.md](reproducibility.md))",
    "runs_dir": "where run directories go (`runs/<date>/<time>_<name>/`)",
    "engine": "Ray runs one actor per client with `federation.client_cpus` CPUs; `inprocess` gives the same metrics "
              "with less start-up time (what the tests and study scripts use)",
    "device": "[deployment.md](deployment.md#gpus)",
    "resume": "[fault-tolerance.md](fault-tolerance.md)",
    "experiment": "later overrides still win over it; `agre_table1` is AGRE-KD's Colored MNIST setting "
                  "([results.md](results.md))",
    "baselines.server_only_cnn_steps": "SGD steps of the network recipe at least",
}
TOP_LEVEL_RULES = {
    "seed": f"a whole number in 0..{MAX_SEED}",
    "name": f"a folder name: `{NAME_PATTERN.pattern}`",
    "engine": "one of " + ", ".join(f"`{e}`" for e in ENGINES),
    "device": f"`{DEVICE_PATTERN.pattern}`",
    "resume": "a run directory",
}
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<item>- )?(?P<key>[A-Za-z_]\w*):[^#]*?(?:\s+#\s?(?P<comment>.*))?$")


# ------------------------------------------------------------------------------------------ what the sources say


def yaml_comments(path: Path) -> tuple[str, dict[str, str]]:
    """A YAML file's leading comment (``# @package`` lines left out) and the comment on each key's line, keyed by
    its dotted path (``baselines.ensemble``; a defaults-list entry by its group name)."""
    header, comments, parents = [], {}, []
    lines = path.read_text().splitlines()
    for line in lines:
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            header.append(line.lstrip("#").strip())
    last = None  # the key whose line comment a following indented comment line continues
    for line in lines:
        match = KEY_LINE.match(line)
        if not match:
            if last in comments and line.startswith(" ") and line.strip().startswith("#"):
                comments[last] += " " + line.strip().lstrip("#").strip()
            else:
                last = None
            continue
        indent = len(match["indent"]) + (2 if match["item"] else 0)
        parents = [(i, k) for i, k in parents if i < indent]
        path_keys = [k for _, k in parents if k != "defaults"] + [match["key"]]
        last = ".".join(path_keys)
        if match["comment"]:
            comments[last] = match["comment"].strip()
        parents.append((indent, match["key"]))
    return " ".join(header), comments


def field_comments(cls: type) -> dict[str, str]:
    """The comment on each dataclass field of ``cls`` (and its bases) in its source: the comment lines right above
    the field, then the comment at the end of its statement."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass.__module__ == "builtins":
            continue
        source = textwrap.dedent(inspect.getsource(klass))
        lines = source.splitlines()
        line_comments = {t.start[0]: t.string.lstrip("#").strip()
                         for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT}
        (node,) = ast.parse(source).body
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            above, row = [], stmt.lineno - 1
            while row >= 1 and lines[row - 1].strip().startswith("#"):
                above.insert(0, line_comments[row])
                row -= 1
            trailing = [line_comments[r] for r in range(stmt.lineno, stmt.end_lineno + 1) if r in line_comments]
            if above or trailing:
                out[stmt.target.id] = " ".join(above + trailing)
    return out


def first_paragraph(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return " ".join(doc.split("\n\n")[0].split())


def composed_sections(choices: dict[str, list[str]]) -> dict[tuple[str, str], dict[str, Any]]:
    """What Hydra composes for every ``<group>=<choice>``, interpolations left as written: one composition per
    row of choices (the i-th choice of every group at once; groups do not read each other)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    out = {}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for i in range(max(len(c) for c in choices.values())):
            row = {group: names[i] for group, names in choices.items() if i < len(names)}
            cfg = compose(config_name="config", overrides=[f"{g}={c}" for g, c in row.items()])
            raw = OmegaConf.to_container(cfg, resolve=False)
            out |= {(group, choice): raw[group] for group, choice in row.items()}
        top = OmegaConf.to_container(compose(config_name="config"), resolve=False)
    out[("", "")] = top
    return out


# ------------------------------------------------------------------------------------------------------ rendering


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def value_text(value: Any) -> str:
    if value is dataclasses.MISSING:
        return "required"
    if isinstance(value, bool) or value is None:
        return f"`{'null' if value is None else str(value).lower()}`"
    if isinstance(value, list | tuple):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    return f"`{value}`" if value != "" else '`""`'


def rule_text(metadata: Any) -> str:
    if "rule" in metadata:
        return metadata["rule"][1]
    if "choices" in metadata:
        return "one of " + ", ".join(f"`{c}`" for c in metadata["choices"])
    if "registry" in metadata:
        registry = REFERENCED[metadata["registry"]]
        return f"a registered {registry.kind}: " + ", ".join(f"`{n}`" for n in sorted(registry))
    return ""


def key_table(cls: type, composed: dict[str, Any], yaml_notes: dict[str, str], skip: tuple[str, ...] = ()) -> list[str]:
    """One row per field of ``cls``: key, type, default (composed, else the dataclass's), rule, meaning."""
    hints, notes = field_types(cls), field_comments(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name not in skip]
    if not fields:
        return ["No keys" + (f" besides `{skip[0]}`." if skip else ".")]
    rows = ["| key | type | default | rule | meaning |", "|---|---|---|---|---|"]
    for f in fields:
        default = composed[f.name] if f.name in composed else declared_default(f)
        meaning = yaml_notes.get(f.name) or notes.get(f.name, "")
        rows.append(f"| `{f.name}` | `{cell(spell(hints[f.name]))}` | {cell(value_text(default))} | "
                    f"{cell(rule_text(f.metadata))} | {cell(meaning)} |")
    return rows


def choice_comments(group: str, choice: str) -> tuple[str, dict[str, str]]:
    """The leading comment of ``conf/<group>/<choice>.yaml`` and its key comments, with those of the files of
    the same group it builds on (its defaults list) where it says nothing itself."""
    path = CONF_DIR / group / f"{choice}.yaml"
    header, comments = yaml_comments(path)
    import yaml

    for base in yaml.safe_load(path.read_text()).get("defaults", []):
        if isinstance(base, str) and base != "_self_" and (CONF_DIR / group / f"{base}.yaml").is_file():
            base_header, base_comments = yaml_comments(CONF_DIR / group / f"{base}.yaml")
            comments = base_comments | comments
            header = header or base_header
    return header, comments


def group_section(group: str, choices: list[str], default: str, composed: dict) -> list[str]:
    registry = COMPONENTS.get(group)
    out = [f"### `{group}`", "", GROUP_NOTES[group], ""]
    if registry is None:
        for choice in choices:
            header, comments = choice_comments(group, choice)
            out += [f"#### `{group}={choice}`" + (" (default)" if choice == default else ""), ""]
            out += ([header, ""] if header else [])
            out += key_table(RUN_SECTIONS[group], composed[(group, choice)], comments) + [""]
        return out
    chosen = {choice: composed[(group, choice)][registry.key] for choice in choices}
    for choice in choices:
        name = chosen[choice]
        header, comments = choice_comments(group, choice)
        stray = set(composed[(group, choice)]) - {f.name for f in dataclasses.fields(registry.params(name))}
        if stray:
            raise SystemExit(f"conf/{group}/{choice}.yaml sets keys {sorted(stray)} that {group} {name!r} does not "
                             "declare: the config would be refused")
        title = f"#### `{group}={choice}`"
        if choice != name:
            title += f": a preset of `{name}`"
        out += [title + (" (default)" if choice == default else ""), ""]
        description = header or first_paragraph(registry[name])
        out += [description, ""] if description else []
        out += key_table(registry.params(name), composed[(group, choice)], comments, skip=(registry.key,)) + [""]
    for name in sorted(set(registry) - set(chosen.values())):
        out += [f"#### `{group}.{registry.key}={name}` (registered, no file in `conf/{group}/`)", "",
                first_paragraph(registry[name]) + f" Its keys, at their dataclass defaults (a YAML file in "
                f"`conf/{group}/` makes it a choice):", ""]
        out += key_table(registry.params(name), {}, {}, skip=(registry.key,)) + [""]
    return out


def top_level_section(defaults: dict[str, str], composed: dict[str, Any]) -> list[str]:
    _, comments = yaml_comments(CONF_DIR / "config.yaml")
    hints = get_type_hints(RunConfig)  # its sections are dataclasses, not values: only the scalar keys are read
    experiments = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
    rows = ["| key | type | default | rule | meaning |", "|---|---|---|---|---|"]

    def row(key: str, kind: str, default: Any, rule: str, meaning: str) -> None:
        note = TOP_LEVEL_NOTES.get(key, "")
        meaning = "; ".join(part for part in (meaning, note) if part)
        rows.append(f"| `{key}` | {cell(kind)} | {cell(value_text(default))} | {cell(rule)} | {cell(meaning)} |")

    for key, value in composed.items():
        if isinstance(value, dict):  # the groups and the baselines section
            continue
        kind = f"`{spell(hints[key])}`" if key in hints else "`str | None`"
        row(key, kind, value, TOP_LEVEL_RULES.get(key, ""), comments.get(key, ""))
    row("experiment", "`str | None`", defaults.get("experiment"),
        "a file of `conf/experiment/`: " + ", ".join(f"`{e}`" for e in experiments), comments.get("experiment", ""))
    baselines = RUN_SECTIONS["baselines"]
    notes = field_comments(baselines)
    bhints = field_types(baselines)
    for f in dataclasses.fields(baselines):
        key = f"baselines.{f.name}"
        row(key, f"`{spell(bhints[f.name])}`", composed["baselines"].get(f.name, declared_default(f)),
            rule_text(f.metadata), comments.get(key) or notes.get(f.name, ""))
    missing = set(TOP_LEVEL_NOTES) - {r.split("`")[1] for r in rows[2:]}
    if missing:
        raise SystemExit(f"config_reference.py: TOP_LEVEL_NOTES names keys conf/config.yaml lacks: {sorted(missing)}")
    return ["## Top level (`conf/config.yaml`)", "", *rows, ""]


def render() -> str:
    """The generated block, markers included."""
    import yaml

    root = yaml.safe_load((CONF_DIR / "config.yaml").read_text())
    defaults = {k: v for entry in root["defaults"] if isinstance(entry, dict) for k, v in entry.items()}
    if set(GROUP_NOTES) != set(GROUPS):
        raise SystemExit(f"config_reference.py: GROUP_NOTES must cover exactly the groups {list(GROUPS)}")
    choices = {g: sorted((p.stem for p in (CONF_DIR / g).glob("*.yaml")), key=lambda c: (c != defaults[g], c))
               for g in GROUPS}
    composed = composed_sections(choices)
    out = [BEGIN, f"<!-- generated by scripts/config_reference.py from the registries and conf/: edit those, then "
                  f"run `{COMMAND}` -->", ""]
    out += top_level_section(defaults, composed[("", "")])
    out += ["## Groups", "", "| group | default | choices |", "|---|---|---|"]
    out += [f"| [`{g}`](#{g}) | `{defaults[g]}` | " + ", ".join(f"`{c}`" for c in choices[g]) + " |" for g in GROUPS]
    out += [""]
    for group in GROUPS:
        out += group_section(group, choices[group], defaults[group], composed)
    return "\n".join(out).rstrip("\n") + "\n" + END


def with_block(document: str, block: str) -> str:
    """``document`` with the text between the markers (markers included) replaced by ``block``."""
    if document.count(BEGIN) != 1 or document.count(END) != 1 or document.index(BEGIN) > document.index(END):
        raise SystemExit(f"{DOC}: needs exactly one {BEGIN} ... {END} block")
    return document[:document.index(BEGIN)] + block + document[document.index(END) + len(END):]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with docs/configuration.md, rewrite nothing")
    args = parser.parse_args(argv)
    current = DOC.read_text()
    wanted = with_block(current, render())
    if not args.check:
        DOC.write_text(wanted)
        return 0
    if wanted == current:
        return 0
    diff = difflib.unified_diff(current.splitlines(), wanted.splitlines(), "committed", "generated", lineterm="")
    print("\n".join(diff))
    print(f"{DOC.relative_to(ROOT)} is stale: run `{COMMAND}` and commit the result", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
