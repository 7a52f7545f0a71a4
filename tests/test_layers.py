"""The package's architecture, read from its import graph: subpackages in layers, imports running one way, no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "trl_replay_ppo"
# Lowest first: a module may import its own subpackage and the ones before it, never one after it.
LAYERS = ("integrations", "core", "data", "models", "rewards", "replay", "checkpointing", "trainer", "tasks", "cli")
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every ``trl_replay_ppo`` module ``path`` imports, anywhere in it (``TYPE_CHECKING`` and function bodies too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; write `from trl_replay_ppo... import`")
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "trl_replay_ppo":
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "trl_replay_ppo")
    return found


def layer(module: str) -> int:
    """The layer of a module: its subpackage's index, or one above every layer for the package root."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): imported_modules(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_sits_in_a_layer():
    loose = [
        m for m in import_graph() if layer(m) == len(LAYERS) and m not in ("trl_replay_ppo", "trl_replay_ppo.__main__")
    ]
    assert loose == [], f"modules outside the layered subpackages {LAYERS}: {loose}"


def test_imports_never_run_up_a_layer():
    upward = [
        f"{module} ({LAYERS[layer(module)] if layer(module) < len(LAYERS) else 'root'}) imports {target}"
        for module, targets in import_graph().items()
        for target in targets
        if layer(target) > layer(module)
    ]
    assert upward == []


def test_the_layer_check_catches_an_upward_import():
    assert layer("trl_replay_ppo.core.masking") < layer("trl_replay_ppo.trainer.driver")
    assert layer("trl_replay_ppo.replay.buffer") > layer("trl_replay_ppo.core.episodes")
    assert layer("trl_replay_ppo") == len(LAYERS)


def test_no_import_cycle():
    graph = {module: {t for t in targets if t in import_graph_modules()} for module, targets in import_graph().items()}
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                raise AssertionError("import cycle: " + " -> ".join([*trail, module, target]))
            if target not in state:
                visit(target, [*trail, module])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [])


def import_graph_modules() -> set[str]:
    return {module_name(path) for path in PACKAGE.rglob("*.py")}


def test_modules_stay_small():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"
