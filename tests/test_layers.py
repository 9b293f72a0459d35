"""The package's shape: each layer imports only the layers below it, no cycles, no private names.

Read from the source with `ast`, so the test sees every import, at module level or inside a
function, without importing anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dexvla"

# Lowest first. A module may import its own part and the parts of lower layers only; parts of
# one layer are peers and ignore each other.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"embodiments"}),
    frozenset({"schema"}),
    frozenset({"io"}),
    frozenset({"stats", "imaging"}),
    frozenset({"policy", "data", "runtime"}),
    frozenset({"sim"}),
    frozenset({"annotate", "train", "eval", "serve"}),
    frozenset({"experiments", "released"}),
    frozenset({"cli"}),
)
MAX_LINES = 420


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str], bool]]:
    """(imported module, names taken from it, at module level?) for every import in `path`."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names], id(node) in top))
    return [item for item in found if item[0].split(".")[0] == "dexvla"]


SOURCES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def _layer(part: str) -> int:
    for index, parts in enumerate(LAYERS):
        if part in parts:
            return index
    raise AssertionError(f"dexvla.{part} is in no layer of tests/test_layers.py")


def test_every_part_has_a_layer() -> None:
    for module in SOURCES:
        if module != "dexvla":
            _layer(_part(module))


def test_imports_run_down_the_layers() -> None:
    upward = []
    for module, path in SOURCES.items():
        if module == "dexvla":
            continue
        part = _part(module)
        for target, _, _ in _imports(path):
            other = _part(target)
            if other != part and other and _layer(other) >= _layer(part):
                upward.append(f"{module} imports {target}")
    assert not upward, "imports that run up or sideways:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    graph = {
        module: {
            target
            for imported, names, at_top in _imports(path)
            if at_top
            for target in [imported, *(f"{imported}.{name}" for name in names)]
            if target in SOURCES and target != module
        }
        for module, path in SOURCES.items()
    }
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles: list[str] = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in state:
                visit(target, [*stack, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_private_names_across_modules() -> None:
    private = [
        f"{module} imports {name} from {target}"
        for module, path in SOURCES.items()
        for target, names, _ in _imports(path)
        for name in names
        if name.startswith("_") and target != module
    ]
    assert not private, "\n".join(private)


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_files_stay_readable(module: str) -> None:
    lines = len(SOURCES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{SOURCES[module]} has {lines} lines (at most {MAX_LINES})"


def test_the_layer_check_sees_an_upward_import(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from dexvla.experiments.demo import x\n")
    ((imported, names, at_top),) = _imports(source)
    assert (imported, names, at_top) == ("dexvla.experiments.demo", ["x"], False)
    assert _layer(_part(imported)) > _layer("policy")
