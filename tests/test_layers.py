"""The two layers of docs/design.md §4: the core never imports the experiment layer, and the modules'
top-level imports form no circle. Known crossings are listed by name, so a new one fails here."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "scorelib"
EXPERIMENT = {"defaults", "build", "validate", "data", "train", "tasks", "sharding", "bench", "checkpoint",
              "published", "presets", "peers"}
# crossings the restructure still has to remove (docs/design.md §4): module -> experiment module it imports
# ("" is the package itself: `import scorelib` still loads build and checkpoint)
KNOWN_CROSSINGS = {("", "build"), ("", "checkpoint")}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """scorelib modules imported by the file (relative imports resolved), at module level only or anywhere."""
    name = _module_name(path)
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".") if name else []
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            if node.module:
                out.add(".".join([*base, *node.module.split(".")]))
            else:
                out.update(".".join([*base, alias.name]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("scorelib."):
            out.add(node.module.removeprefix("scorelib."))
    return out


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_experiment(module: str) -> bool:
    return module.split(".")[0] in EXPERIMENT


def test_the_core_never_imports_the_experiment_layer():
    crossings = set()
    for name, path in _modules().items():
        if name and _is_experiment(name):
            continue
        crossings |= {(name, dep) for dep in _imports(path, top_level_only=False) if _is_experiment(dep)}
    assert crossings <= KNOWN_CROSSINGS, sorted(crossings - KNOWN_CROSSINGS)


def test_module_level_imports_form_no_circle():
    modules = _modules()
    graph = {name: {d for d in _imports(path, top_level_only=True) if d in modules and d != name}
             for name, path in modules.items() if name}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            assert state.get(dep) != 1, " -> ".join([*trail, node, dep])
            if dep not in state:
                visit(dep, [*trail, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
