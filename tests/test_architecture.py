"""The house rules that keep fedkd easy to extend, checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fedkd", "clients", "server")
SELECTOR_ATTRIBUTES = {"name", "objective"}  # the fields that pick a registered component


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _is_name_literal(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return bool(node.elts) and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts)
    return False


def _name_comparisons(tree: ast.AST) -> list[int]:
    """Lines comparing a component's ``.name`` / ``.objective`` with string literals (``==``, ``!=``, ``in``)."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        selects = any(isinstance(o, ast.Attribute) and o.attr in SELECTOR_ATTRIBUTES for o in operands)
        if selects and any(_is_name_literal(o) for o in operands):
            lines.append(node.lineno)
    return lines


def test_the_scanner_finds_name_comparisons():
    tree = ast.parse("a = cfg.privacy.name == 'dpsgd'\nb = cfg.teacher.objective in ('erm', 'dfr')\n"
                     "c = cfg.name == other\nd = path.suffix == '.py'\n")
    assert _name_comparisons(tree) == [1, 2]


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
    long = {str(p.relative_to(ROOT)): n for p in _sources() if (n := len(p.read_text().splitlines())) > 420}
    assert long == {}
