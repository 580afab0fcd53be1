"""The two layers of docs/design.md §4: the core never imports the experiment layer (not even inside
a function), `import scorelib` loads the core only, and the modules' imports form no circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "scorelib"
EXPERIMENT = {"builder", "validate", "train", "tasks", "sampling", "bench", "sharing", "presets", "cli"}


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
    assert not crossings, sorted(crossings)


def test_import_scorelib_loads_the_core_only_and_resolves_load_save_experiment_on_use():
    code = ("import sys, scorelib; core = sorted(m for m in sys.modules if m.startswith('scorelib.')); "
            "from scorelib import experiment, load, save; "
            "print(' '.join(core)); print(load.__module__, save.__module__, experiment.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, check=True)
    loaded, lazy = out.stdout.splitlines()
    experiment = [m for m in loaded.split() if _is_experiment(m.removeprefix("scorelib."))]
    assert loaded and not experiment, experiment
    assert lazy == "scorelib.sharing scorelib.sharing scorelib.builder"


def test_imports_form_no_circle():
    """No circle among the modules' imports, function-local ones included (a module's own submodules
    importing their package's names count as the package)."""
    modules = _modules()
    graph = {name: {d for d in _imports(path, top_level_only=False) if d in modules and d != name
                    and not d.startswith(name + ".") and not name.startswith(d + ".")}
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
