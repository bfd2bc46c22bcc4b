"""The house rules that keep fedkd easy to extend, checked on the source itself."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from fedkd.config import RUN_SECTIONS
from fedkd.validation import COMPONENTS, REFERENCED

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fedkd", "clients", "server")
SELECTOR_ATTRIBUTES = {"name", "objective"}  # the fields that pick a registered component
REGISTRIES = [*COMPONENTS.values(), *REFERENCED.values()]
REGISTERED_NAMES = {name for registry in REGISTRIES for name in registry}


def _own_vocabularies() -> set[str]:
    """Identifiers whose values are a vocabulary of their own that may share a word with a registered name: a
    parameter with fixed choices (``bias_reference: mean | reliability``) and a component's declared trait
    (``unit: none | example | client``). Comparing these with a literal is how a component reads them."""
    params = {cls for registry in COMPONENTS.values() for cls in registry.param_classes.values()}
    params |= set(RUN_SECTIONS.values())
    names = {f.name for cls in params for f in dataclasses.fields(cls) if "choices" in f.metadata}
    classes = {c for registry in REGISTRIES for b in registry.values() if isinstance(b, type) for c in b.__mro__}
    for cls in classes | params:
        names |= {k for k, hint in vars(cls).get("__annotations__", {}).items() if str(hint).startswith("ClassVar")}
    return names


OWN_VOCABULARIES = _own_vocabularies()


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _literal_strings(node: ast.AST) -> set[str] | None:
    """The strings of a string literal or a literal tuple/list/set of them; None for anything else."""
    elements = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) and node.elts else [node]
    if all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in elements):
        return {e.value for e in elements}
    return None


def _identifier(node: ast.AST) -> str | None:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


def _name_comparisons(tree: ast.AST) -> list[int]:
    """Lines comparing (``==``, ``!=``, ``in``) with string literals either a component's ``.name`` /
    ``.objective``, or any value held in a variable or attribute against a literal that is a registered name of
    some registry (``compression == "topk"``, ``method in ("agre", "mean")``), unless that identifier is a
    vocabulary of its own (a parameter with fixed choices, a declared trait) that happens to share the word."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        literals = set().union(*(s for o in operands if (s := _literal_strings(o)) is not None))
        if not literals:
            continue
        held = [o for o in operands if _literal_strings(o) is None]
        selects = any(isinstance(o, ast.Attribute) and o.attr in SELECTOR_ATTRIBUTES for o in held)
        names_a_component = bool(literals & REGISTERED_NAMES) and any(
            _identifier(o) not in OWN_VOCABULARIES for o in held)
        if selects or names_a_component:
            lines.append(node.lineno)
    return lines


def test_the_scanner_finds_name_comparisons():
    assert {"topk", "mean", "dpsgd", "erm"} <= REGISTERED_NAMES and {"unit", "bias_reference"} <= OWN_VOCABULARIES
    tree = ast.parse("a = cfg.privacy.name == 'dpsgd'\nb = cfg.teacher.objective in ('erm', 'dfr')\n"
                     "c = cfg.name == other\nd = path.suffix == '.py'\n"
                     "e = cfg.query.compression == 'topk'\nf = method in ('agre', 'mean')\n"
                     "g = 'fp16' != kinds[0]\nh = mechanism.unit == 'none'\n"
                     "i = self.cfg.bias_reference == 'mean'\nj = mode == 'fast'\nk = 'cnn' == 'cnn'\n")
    assert _name_comparisons(tree) == [1, 2, 5, 6, 7]


def test_no_component_is_recognised_by_its_name():
    """Components declare what they need; nothing compares a registered name with a string literal."""
    found = {str(p.relative_to(ROOT)): lines for p in _sources()
             if (lines := _name_comparisons(ast.parse(p.read_text(), str(p))))}
    assert found == {}


def test_support_and_agre_are_named_only_in_their_own_modules():
    """Adding an aggregator is one module and one YAML: outside their modules no code names these two, by string
    (a config value, a key) or by identifier (docstrings may, as examples; RAD's and the simplex projection's
    mathematical "support" is another word)."""
    own = {ROOT / "fedkd" / "aggregators" / "agre.py", ROOT / "fedkd" / "aggregators" / "support.py"}
    found = {}
    for path in _sources():
        if path not in own:
            found.update({f"{path.relative_to(ROOT)}:{line}": text for line, text in _method_mentions(path)})
    assert found == {}


def _method_mentions(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    mentions = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words = set(node.value.lower().replace("=", " ").replace("_", " ").replace(".", " ").split())
            if "agre" in words or node.value.strip() == "support":
                mentions.append((node.lineno, node.value))
        elif isinstance(node, ast.Name | ast.alias | ast.FunctionDef | ast.ClassDef | ast.Attribute):
            text = getattr(node, "id", None) or getattr(node, "name", None) or getattr(node, "attr", None) or ""
            if "agre" in text.lower().split("_") or text in ("support_weights", "with_support", "SupportWeighted"):
                mentions.append((node.lineno, text))
    return mentions


def test_no_module_of_the_packages_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in _sources() if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
