"""docs/architecture.md's dependency drawing and the README's Layout, checked against the code.

Imports are read with ``ast`` from every module of ``ulffn_deploy/``, ``train/``, ``export/`` and
``calib/``: module-level imports and imports inside functions (the lazy ones) count; imports under
``if TYPE_CHECKING:`` do not, since they never run.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"ulffn_deploy": ROOT / "ulffn_deploy", "ulffn_deploy.train": ROOT / "train",
            "ulffn_deploy.export": ROOT / "export", "ulffn_deploy.calib": ROOT / "calib"}


def modules() -> dict[str, Path]:
    """{dotted module name: file} for the installed package (``train/`` is ``ulffn_deploy.train``)."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [part for part in path.relative_to(folder).with_suffix("").parts if part != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for statement in node.body for inner in ast.walk(statement))
    return skipped


def imported_modules(name: str, path: Path) -> set[str]:
    """Every name ``name`` imports that could be a module: ``from a import b`` yields ``a`` and ``a.b``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_nodes(tree)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def drawing() -> tuple[dict[str, list[str]], set[tuple[str, str]]]:
    """The groups and arrows of the ```dependencies block in docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = re.search(r"```dependencies\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md has no ```dependencies block"
    groups: dict[str, list[str]] = {}
    arrows: set[tuple[str, str]] = set()
    for line in block.group(1).splitlines():
        if "->" in line:
            source, targets = (side.strip() for side in line.split("->"))
            arrows.update((source, target.strip()) for target in targets.split(","))
        elif "=" in line:
            group, members = (side.strip() for side in line.split("="))
            groups[group] = [member.strip() for member in members.split(",")]
    return groups, arrows


def group_of(module: str, groups: dict[str, list[str]]) -> str:
    """The group whose longest member name matches ``module`` (``*``: any module)."""
    relative = module.removeprefix("ulffn_deploy").lstrip(".")
    best, length = None, -1
    for group, members in groups.items():
        for member in members:
            if member == "*" and length < 0:
                best = group
            elif member != "*" and (relative == member or relative.startswith(member + ".")) and len(member) > length:
                best, length = group, len(member)
    assert best, f"{module} belongs to no group of docs/architecture.md"
    return best


def actual_arrows(groups: dict[str, list[str]]) -> dict[tuple[str, str], list[str]]:
    """{(group, group): example imports} for every import from one group's module into another group's."""
    found = modules()
    arrows: dict[tuple[str, str], list[str]] = {}
    for name, path in found.items():
        for target in imported_modules(name, path) & set(found):
            pair = (group_of(name, groups), group_of(target, groups))
            if pair[0] != pair[1]:
                arrows.setdefault(pair, []).append(f"{name} imports {target}")
    return arrows


def test_every_drawn_arrow_is_an_import_and_every_import_between_groups_is_drawn():
    groups, drawn = drawing()
    actual = actual_arrows(groups)
    assert not {group for arrow in drawn for group in arrow} - set(groups), "an arrow names an undefined group"
    assert sorted(drawn - set(actual)) == [], "drawn in docs/architecture.md, but no module imports that way"
    undrawn = {f"{a} -> {b}": sorted(actual[(a, b)])[:3] for a, b in set(actual) - drawn}
    assert undrawn == {}, "imports between groups that docs/architecture.md does not draw"


def test_the_import_reader_sees_lazy_and_relative_imports_but_not_type_checking_ones(tmp_path):
    path = tmp_path / "pipeline.py"
    path.write_text("from typing import TYPE_CHECKING\nfrom .source import x\nif TYPE_CHECKING:\n    import onnx\n"
                    "def f():\n    from ulffn_deploy.harness import compare\n")
    found = imported_modules("ulffn_deploy.calib.pipeline", path)
    assert {"ulffn_deploy.calib.source", "ulffn_deploy.harness"} <= found and "onnx" not in found


def test_the_readme_layout_lists_every_module():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Layout\n", 1)[1].split("```\n", 2)[1]
    listed: set[str] = set()
    folders: list[tuple[int, str]] = []
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip())
        name, _, description = line.strip().partition(" ")
        folders = [(depth, folder) for depth, folder in folders if depth < indent]
        prefix = "".join(folder for _, folder in folders)
        listed.add(prefix + name)
        if name.endswith("/"):
            folders.append((indent, name))
            listed.update(prefix + name + child for child in re.findall(r"[\w]+\.py", description))
    expected = {path.relative_to(ROOT).as_posix() for path in modules().values() if path.name != "__init__.py"}
    assert sorted(expected - listed) == [], "modules missing from the README's Layout"
    assert sorted(path for path in listed - expected if path.endswith(".py")) == [], "listed, but no such module"
